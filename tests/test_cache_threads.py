"""The prepared-weight cache under concurrent use (issue 11, defect 1).

Reader threads call a fast ``MaskedLinear`` (or FVSBN) under ``no_grad`` while a writer
thread updates its weight in place (``weight.add_`` under ``no_grad``, ``SGD.step()``).
A call that overlaps an update may see either version (or a mix, as any PyTorch op
reading a tensor being written), but once every thread has joined, every call must equal
the reference computed from the current weight: nothing stale may stay in the cache.
"""
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import armodel_fast as af
from armodel_fast import dispatch as _backend
from armodel_fast.ops.masked_linear import cache as ml_ops

CPP = _backend._why_not("cpp", "masked_linear", torch.device("cpu")) is None
needs_cpp = pytest.mark.skipif(not CPP, reason=f"no cpp masked_linear here:\n{af.explain('masked_linear')}")

READERS = 2
CALLS_PER_READER = 2


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the readers' kernels then overlap the writer instead of queueing
    behind each other's OpenMP teams (on 2 cores the race is as likely and 10x faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _race(rounds: int, call, update, check) -> int:
    """Run ``rounds`` rounds of READERS threads calling ``call()`` under no_grad while one
    thread runs ``update(round)``; after each round's join, ``check()`` must hold.
    Returns the number of rounds whose check failed (a stale cache entry)."""
    stale = 0
    for r in range(rounds):
        af.clear_cache()  # the readers' first calls build while the writer writes: the racy case
        start = threading.Barrier(READERS + 1)
        errors = []

        def reader():
            try:
                start.wait()
                with torch.no_grad():
                    for _ in range(CALLS_PER_READER):
                        call()
            except BaseException as e:  # surfaced below: a failing thread must fail the test
                errors.append(e)

        def writer():
            try:
                start.wait()
                time.sleep(r % 3 * 3e-4)  # land at different points of the readers' builds
                update(r)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(READERS)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        stale += not check()
    return stale


def _masked_linear_race(rounds: int, n: int, seed: int = 0) -> tuple:
    """(stale rounds, seconds) for an n x n cpp MaskedLinear, updates alternating between
    ``weight.add_`` under no_grad and ``SGD.step()``."""
    g = torch.Generator().manual_seed(seed)
    layer = af.MaskedLinear(n, n, torch.randint(1, 9, (n,), generator=g), torch.randint(0, 9, (n,), generator=g),
                            backend="cpp")
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    grads = [torch.randn(p.shape, generator=g) * 0.02 for p in layer.parameters()]
    x = torch.randn(2, n, generator=g)
    mask = layer.mask()
    delta = torch.randn(n, n, generator=g) * 0.01

    def update(r):
        sign = 1 if r % 4 < 2 else -1  # steps that cancel: the weights stay near their start
        if r % 2:
            for p, grad in zip(layer.parameters(), grads):
                p.grad = sign * grad
            opt.step()
        else:
            with torch.no_grad():
                layer.weight.add_(sign * delta)

    def check():
        with torch.no_grad():
            want = F.linear(x, layer.weight * mask, layer.bias)
            return torch.allclose(layer(x), want, rtol=1e-4, atol=1e-4)

    af.clear_cache()
    t0 = time.perf_counter()
    stale = _race(rounds, lambda: layer(x), update, check)
    return stale, time.perf_counter() - t0


@needs_cpp
def test_no_stale_weights_after_concurrent_updates():
    """1,000 rounds at 1024 x 1024 (the size that showed the race on every run before the fix)."""
    stale, seconds = _masked_linear_race(1000, 1024)
    assert stale == 0, f"{stale} of 1000 rounds left stale prepared weights in the cache ({seconds:.1f} s)"


@needs_cpp
@pytest.mark.slow
@pytest.mark.parametrize("n, rounds", [(256, 5000), (1024, 5000)])
def test_no_stale_weights_after_concurrent_updates_long(n, rounds):
    stale, seconds = _masked_linear_race(rounds, n, seed=n)
    assert stale == 0, f"{stale} of {rounds} rounds left stale prepared weights in the cache ({seconds:.1f} s)"


@needs_cpp
def test_fvsbn_no_stale_weights_after_concurrent_updates():
    """The same race through a model: FVSBN's log_prob against the reference backend's."""
    D = 512
    g = torch.Generator().manual_seed(1)
    fast = af.FVSBN(D, backend="cpp")
    with torch.no_grad():
        fast.linear.weight.copy_(torch.randn(D, D, generator=g) * 0.05)
    ref = af.FVSBN(D, backend="reference")
    x = torch.randint(0, 2, (2, D), generator=g).float()
    delta = torch.randn(D, D, generator=g) * 0.01

    def update(r):
        with torch.no_grad():
            fast.linear.weight.add_(delta if r % 2 else -2 * delta)

    def check():
        ref.load_state_dict(fast.state_dict())
        with torch.no_grad():
            return torch.allclose(fast.log_prob(x), ref.log_prob(x), rtol=1e-4, atol=1e-3)

    af.clear_cache()
    assert _race(200, lambda: fast.log_prob(x), update, check) == 0


@pytest.mark.parametrize("tracked", [True, False])
def test_update_landing_during_a_build_is_not_kept(tracked):
    """The race made deterministic: another thread's update lands while a build reads the
    weight (here: inside the build). ``tracked``: ``add_`` under no_grad (bumps the version
    once written); else a write through ``.data`` whose version bump comes later (as when a
    tracked write is still running when the build ends). The next lookup must rebuild."""
    weight = torch.randn(16, 16)
    din, dout = torch.randint(0, 4, (16,)), torch.randint(0, 4, (16,))
    before = weight.clone()

    def racing_build(*degrees):
        seen = weight.clone()
        with torch.no_grad():
            (weight if tracked else weight.data).add_(1.0)
        return seen

    af.clear_cache()
    first = ml_ops._cached("cpp", weight, din, dout, False, 8, racing_build)
    assert torch.equal(first, before)  # that call saw the old weights: allowed
    again = ml_ops._cached("cpp", weight, din, dout, False, 8, lambda *degrees: weight.clone())
    assert torch.equal(again, weight), "the cache kept a build from before the update"
