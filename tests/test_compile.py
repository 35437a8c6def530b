"""torch.compile(fullgraph=True) traces the models with the fast backends (custom ops with
fake implementations and autograd) and gives the same log-probs and gradients."""
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
