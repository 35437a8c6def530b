"""MADE on the CPU: forward through masked_linear and one-pass sampling, against the usual forms.

MADE with D=784, hidden [2000, 2000], ReLU, Bernoulli outputs, batch 128:

* forward (evaluation, no grad): ``cpp`` (the fast backend: staircase blocks,
  cached degree-sorted weights, hidden units kept sorted between layers)
  against ``mask-each`` (the usual MADE code: ``F.linear(h, W * M, b)`` with
  stored masks, one multiply per layer per call), ``unmasked`` (the same
  network of plain nn.Linear layers) and ``reference`` (this package's
  reference module, which also rebuilds the masks from the degrees);
* training step (forward + backward of the mean NLL, weights updated in place
  before every call so nothing stays cached): ``cpp`` against ``mask-each``;
* sampling 16 samples: ``cpp`` (every hidden unit computed once, one C++ call)
  against the reference sampler (D forward passes).

    pytest benchmarks/bench_made.py          # pytest-benchmark
    python benchmarks/bench_made.py          # ratio table
"""
from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn.functional as F

import armodel_fast as af
from armodel_fast.reference.heads import bernoulli_log_prob

B, D, HIDDEN, N_SAMPLES = 128, 784, [2000, 2000], 16


def model(backend: str) -> af.MADE:
    torch.manual_seed(0)
    return af.MADE(D, HIDDEN, backend=backend)


def plain_forward(m: af.MADE, masks):
    """The usual MADE forward: stored masks multiplied into the weights on every call."""
    layers = list(m.layers) + [m.output]

    def run(x):
        h = x
        for i, layer in enumerate(layers):
            w = layer.weight if masks is None else layer.weight * masks[i]
            h = F.linear(h, w, layer.bias)
            if i < len(layers) - 1:
                h = F.relu(h)
        return h
    return run


def forward_fns():
    x = torch.randint(0, 2, (B, D), generator=torch.Generator().manual_seed(1)).float()
    fast, ref = model("cpp"), model("reference")
    masks = [layer.mask() for layer in list(fast.layers) + [fast.output]]
    mask_each, unmasked = plain_forward(fast, masks), plain_forward(fast, None)

    def no_grad(f):
        def run():
            with torch.no_grad():
                return f()
        return run
    return {
        "cpp": no_grad(lambda: fast(x)),
        "mask-each": no_grad(lambda: mask_each(x)),
        "unmasked": no_grad(lambda: unmasked(x)),
        "reference": no_grad(lambda: ref(x)),
    }


def train_fns():
    x = torch.randint(0, 2, (B, D), generator=torch.Generator().manual_seed(1)).float()
    fast = model("cpp")
    masks = [layer.mask() for layer in list(fast.layers) + [fast.output]]
    mask_each = plain_forward(fast, masks)

    def step(loss_fn):
        def run():
            with torch.no_grad():
                for p in fast.parameters():
                    p.mul_(1.0)  # stands for the optimizer step
            fast.zero_grad(set_to_none=True)
            loss_fn().backward()
        return run
    return {
        "cpp": step(lambda: -fast.log_prob(x).mean()),
        "mask-each": step(lambda: -bernoulli_log_prob(mask_each(x), x).sum(-1).mean()),
    }


def sample_fns():
    u = torch.rand(N_SAMPLES, D, generator=torch.Generator().manual_seed(2))
    fast, ref = model("cpp"), model("reference")
    return {"cpp": lambda: fast.sample(N_SAMPLES, u=u), "reference": lambda: ref.sample(N_SAMPLES, u=u)}


@pytest.mark.parametrize("provider", ["cpp", "mask-each", "unmasked", "reference"])
def test_made_forward(benchmark, provider):
    benchmark.group = f"MADE forward B={B} D={D} hidden={HIDDEN}"
    benchmark(forward_fns()[provider])


@pytest.mark.parametrize("provider", ["cpp", "mask-each"])
def test_made_train_step(benchmark, provider):
    benchmark.group = f"MADE train step B={B} D={D} hidden={HIDDEN}"
    benchmark(train_fns()[provider])


@pytest.mark.parametrize("provider", ["cpp", "reference"])
def test_made_sample(benchmark, provider):
    benchmark.group = f"MADE sample n={N_SAMPLES} D={D} hidden={HIDDEN}"
    fn = sample_fns()[provider]
    if provider == "reference":  # seconds per call: a single round
        benchmark.pedantic(fn, rounds=1, iterations=1)
    else:
        benchmark(fn)


@pytest.mark.parametrize("provider", ["triton", "cuda", "reference"])
def test_made_sample_gpu(benchmark, provider):
    """On a CUDA GPU: the one-launch samplers (Triton, CUDA) against the D-pass reference."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from armodel_fast import _backend
    why = None if provider == "reference" else _backend._why_not(provider, "made", torch.device("cuda"))
    if why is not None:
        pytest.skip(why)
    m = model(provider).cuda()
    u = torch.rand(N_SAMPLES, D, generator=torch.Generator().manual_seed(2)).cuda()

    def fn():
        m.sample(N_SAMPLES, u=u)
        torch.cuda.synchronize()
    benchmark.group = f"MADE sample on {torch.cuda.get_device_name()} n={N_SAMPLES} D={D} hidden={HIDDEN}"
    if provider == "reference":
        benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=1)
    else:
        benchmark(fn)


def best_ms(fns: dict, repeats: dict) -> dict:
    """Minimum time (ms) of each callable; calls interleaved so background load hits all alike."""
    times = {k: float("inf") for k in fns}
    for k, f in fns.items():
        f()
    for r in range(max(repeats.values())):
        for k, f in fns.items():
            if r < repeats[k]:
                t = time.perf_counter()
                f()
                times[k] = min(times[k], (time.perf_counter() - t) * 1e3)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--reference-sample-repeats", type=int, default=2)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"MADE D={D} hidden={HIDDEN}, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(min of interleaved calls)")
    t = best_ms(forward_fns(), {k: args.repeats for k in ("cpp", "mask-each", "unmasked", "reference")})
    print(f"forward B={B}:    " + ", ".join(f"{k} {v:.2f} ms" for k, v in t.items()))
    for k in ("mask-each", "unmasked", "reference"):
        print(f"  cpp vs {k:<10} {t[k] / t['cpp']:6.2f}x")
    t = best_ms(train_fns(), {"cpp": args.repeats, "mask-each": args.repeats})
    print(f"train step B={B}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in t.items()))
    print(f"  cpp vs mask-each  {t['mask-each'] / t['cpp']:6.2f}x")
    t = best_ms(sample_fns(), {"cpp": args.repeats, "reference": args.reference_sample_repeats})
    print(f"sample n={N_SAMPLES}:     " + ", ".join(f"{k} {v:.2f} ms" for k, v in t.items()))
    print(f"  cpp vs reference  {t['reference'] / t['cpp']:6.1f}x")


if __name__ == "__main__":
    main()
