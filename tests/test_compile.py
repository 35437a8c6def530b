"""torch.compile(fullgraph=True) traces the models with the fast backends (custom ops with
fake implementations and autograd) and gives the same log-probs and gradients."""
import copy
import math

import pytest
import torch

import armodel_fast as af
from model_zoo import randomize

pytestmark = pytest.mark.skipif(not af.backends()["cpp"].available, reason="needs the C++ extension")


def _models():
    D = 10
    yield "nade", af.NADE(D, 16, order=torch.randperm(D), backend="cpp"), (torch.rand(6, D) < 0.5).float()
    yield "made", af.MADE(D, [24, 24], direct=True, order="random", backend="cpp"), (torch.rand(6, D) < 0.5).float()
    yield "rnade", af.RNADE(D, 8, 3, backend="cpp"), torch.randn(6, D)
    yield "categorical_nade", af.CategoricalNADE(D, 8, 4, backend="cpp"), torch.randint(0, 4, (6, D))


@pytest.mark.parametrize("name,model,x", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_fullgraph_compile_matches_eager(name, model, x):
    randomize(model, 0.5)
    torch._dynamo.reset()
    compiled = torch.compile(model.log_prob, fullgraph=True)
    lp_c = compiled(x)
    lp_e = model.log_prob(x)
    assert model.last_backend == "cpp"
    torch.testing.assert_close(lp_c, lp_e, rtol=1e-5, atol=1e-5)
    g_c = torch.autograd.grad(lp_c.sum(), list(model.parameters()), allow_unused=True)
    g_e = torch.autograd.grad(lp_e.sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(g_c, g_e):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_auto_backend_under_compile_runs_the_kernel_auto_picks(device):
    """backend="auto" inside a compiled function resolves as in eager mode (the fastest available
    kernel for the device: cpp on the CPU, cuda or triton on a GPU), never silently to the
    reference: the graph calls the custom op with that backend's name."""
    from armodel_fast import dispatch
    from armodel_fast.ops import nade as ops

    model = randomize(af.NADE(6, 5), 0.5).to(device)
    x = (torch.rand(3, 6, device=device) < 0.5).float()
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    expected = dispatch.resolve_backend("auto", "nade", torch.device(device))
    assert expected != "reference", af.explain("nade", device)
    f = torch.compile(lambda x, *p: ops.nade_log_prob(x, *p, backend="auto"), backend=record, fullgraph=True)
    torch.testing.assert_close(f(x, *model.params()), ops.nade_log_prob(x, *model.params(), backend=expected))
    code = "\n".join(g.code for g in graphs)
    assert "armodel_fast.nade_forward" in code and f"'{expected}'" in code, code


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_compiled_ensemble_log_prob_and_its_gradient(backend):
    """log_prob(ensemble=2) switches the masks in place, so under torch.compile it runs eagerly (a
    graph break; it raised in backward before); log-prob and gradient equal the log-mean-exp of
    one model copy per mask set, and the current mask is left as it was."""
    torch.manual_seed(0)
    model = af.MADE(6, [16], num_masks=3, order="random", backend=backend)
    randomize(model, 0.5)
    x = (torch.rand(5, 6) < 0.5).float()
    copies = [copy.deepcopy(model) for _ in range(2)]
    for k, c in enumerate(copies):
        c.set_mask(k)
    want = torch.logsumexp(torch.stack([c.log_prob(x) for c in copies]), 0) - math.log(2)
    per_copy = torch.autograd.grad(want.sum(), [p for c in copies for p in c.parameters()])
    n = len(list(model.parameters()))
    want_grads = [a + b for a, b in zip(per_copy[:n], per_copy[n:])]
    torch._dynamo.reset()
    got = torch.compile(lambda x: model.log_prob(x, ensemble=2))(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(torch.autograd.grad(got.sum(), list(model.parameters())), want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert int(model.mask_index) == 0 and model.last_backend == backend


def test_auto_under_compile_applies_the_size_rule(monkeypatch):
    """Compiled, ``auto`` keeps the CPU size rule (sized from the shapes; the degrees' values are not
    read, so fullgraph holds): a tiny MADE / MaskedLinear / FVSBN traces the reference, and with the
    thresholds at 0 the kernels (the graph calls the custom op)."""
    from armodel_fast import dispatch

    def models():
        yield af.MADE(8, [16], backend="auto"), torch.ones(3, 8)
        yield af.FVSBN(8, backend="auto"), torch.ones(3, 8)
        layer = af.MaskedLinear(8, 16, torch.arange(8), torch.arange(16) % 8, backend="auto")
        yield layer, torch.randn(3, 8)

    for thresholds, want in (({}, "reference"), ({"train": 0, "eval": 0, "train_unsorted": 0, "train_unsorted_tiles": 0}, "cpp")):
        if thresholds:
            monkeypatch.setattr(dispatch, "AUTO_MIN_WORK", thresholds)
        for model, x in models():
            graphs = []
            torch._dynamo.reset()
            f = model.log_prob if hasattr(model, "log_prob") else model
            out = torch.compile(f, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)(x)
            out.sum().backward()
            code = "\n".join(g.code for g in graphs)
            assert ("armodel_fast." in code) == (want == "cpp"), (type(model).__name__, want, code)
            assert model.last_backend == want, type(model).__name__


def _dynamic_cases():
    D = 6
    bits = lambda B: (torch.rand(B, D) < 0.5).float()  # noqa: E731
    for backend in ("reference", "cpp"):
        yield f"fvsbn-{backend}", lambda b=backend: af.FVSBN(D, backend=b), bits
        yield f"nade-{backend}", lambda b=backend: af.NADE(D, 5, order=torch.randperm(D), backend=b), bits
        yield f"made-{backend}", lambda b=backend: af.MADE(D, [12], order="random", backend=b), bits
        yield f"rnade-{backend}", lambda b=backend: af.RNADE(D, 5, 2, backend=b), lambda B: torch.randn(B, D)
        yield (f"categorical_nade-{backend}", lambda b=backend: af.CategoricalNADE(D, 5, 3, backend=b),
               lambda B: torch.randint(0, 3, (B, D)))


@pytest.mark.parametrize("name,make,data", list(_dynamic_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_dynamic_fullgraph_compile(name, make, data):
    """``torch.compile(..., dynamic=True, fullgraph=True)``: the batch and the int arguments
    (``ensemble``) are symbolic; the reference loops index with them. One graph, eager's values."""
    torch.manual_seed(0)
    model = randomize(make(), 0.5)
    torch._dynamo.reset()
    compiled = torch.compile(model.log_prob, dynamic=True, fullgraph=True)
    for B in (3, 5):
        x = data(B)
        torch.testing.assert_close(compiled(x), model.log_prob(x), rtol=1e-5, atol=1e-5)
