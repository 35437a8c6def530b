"""The two plain NADE forms (step loop and vectorised cumsum) agree; gradcheck in fp64."""
import pytest
import torch

import armodel_fast as af
from armodel_fast.reference import categorical_nade as cref
from armodel_fast.reference import nade as nref
from armodel_fast.reference import rnade as rref
from model_zoo import randomize


@pytest.mark.parametrize("D,H,B", [(1, 3, 2), (7, 5, 4), (30, 17, 3)])
def test_nade_loop_equals_cumsum(D, H, B):
    m = randomize(af.NADE(D, H, order=torch.randperm(D))).double()
    x = (torch.rand(B, D) < 0.5).double()
    torch.testing.assert_close(nref.nade_logits_loop(x, *m.params()), nref.nade_logits_cumsum(x, *m.params()))
    for form in ("loop", "cumsum"):
        torch.testing.assert_close(nref.nade_log_prob(x, *m.params(), form=form), m.log_prob(x))


@pytest.mark.parametrize("D,H,K", [(1, 3, 2), (6, 5, 4)])
def test_categorical_and_rnade_loop_equals_cumsum(D, H, K):
    m = randomize(af.CategoricalNADE(D, H, K, order=torch.randperm(D))).double()
    x = torch.randint(0, K, (3, D))
    torch.testing.assert_close(cref.categorical_nade_logits_loop(x, *m.params()),
                               cref.categorical_nade_logits_cumsum(x, *m.params()))
    r = randomize(af.RNADE(D, H, K, order=torch.randperm(D)), 0.5).double()
    xr = torch.randn(3, D, dtype=torch.float64)
    torch.testing.assert_close(rref.rnade_params_loop(xr, *r.params()), rref.rnade_params_cumsum(xr, *r.params()))


def test_gradcheck_fp64_tiny():
    torch.manual_seed(0)
    D, H, K = 4, 3, 2
    x = (torch.rand(2, D) < 0.5).double()
    xc = torch.randint(0, K, (2, D))
    xr = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    o = torch.randperm(D)
    for fn, model, inp in [(nref.nade_log_prob, af.NADE(D, H, order=o), x),
                           (cref.categorical_nade_log_prob, af.CategoricalNADE(D, H, K, order=o), xc)]:
        W, c, V, b, order = randomize(model).double().params()
        args = tuple(t.detach().requires_grad_() for t in (W, c, V, b))
        assert torch.autograd.gradcheck(lambda *p: fn(inp, *p, order), args)
    W, c, V, b, order = randomize(af.RNADE(D, H, K, order=o), 0.5).double().params()
    args = (xr,) + tuple(t.detach().requires_grad_() for t in (W, c, V, b))
    assert torch.autograd.gradcheck(lambda xx, *p: rref.rnade_log_prob(xx, *p, order), args)
    for module in (af.MADE(D, [5], direct=True, order="random"), af.FVSBN(D, order=o), af.ARRNN(D, 3)):
        module = randomize(module).double()
        names = [n for n, _ in module.named_parameters()]
        params = tuple(p.detach().requires_grad_() for p in module.parameters())
        assert torch.autograd.gradcheck(
            lambda *p: torch.func.functional_call(module, dict(zip(names, p)), (x,)), params)
