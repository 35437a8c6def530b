"""Autoregressive property: output d's parameters ignore inputs at or after d in the order."""
import pytest
import torch

import armodel_fast as af
from model_zoo import binary_models, positions, randomize


def _flat_params(out):
    """Per-dimension params as [B, D, P] whatever the head returns."""
    if isinstance(out, tuple):
        return torch.stack(out, dim=-1).flatten(2)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _check_jacobian(model, x, order):
    """J[d, e] = d params_d / d x_e must vanish when pos[e] >= pos[d], and not be all zero."""
    def f(inp):
        return _flat_params(model(inp))[0]          # [D, P]
    J = torch.autograd.functional.jacobian(f, x[:1])  # [D, P, 1, D]
    J = J.abs().sum(dim=(1, 2))                      # [D(out), D(in)]
    pos = positions(order)
    forbidden = pos[None, :] >= pos[:, None]         # [out d, in e]
    assert J[forbidden].max().item() == 0.0, "an output depends on its own or a later input"
    if x.shape[1] > 1:
        assert J[~forbidden].max().item() > 0, "no dependency at all: the test would be vacuous"


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_models_jacobian(seed):
    D = 9
    for name, model in binary_models(D, seed):
        model.double()
        x = (torch.rand(2, D, dtype=torch.float64) < 0.5).double()
        order = model.order
        _check_jacobian(model, x, order)
        if isinstance(model, af.MADE):
            for _ in range(model.num_masks - 1):
                model.next_mask()
                _check_jacobian(model, x, model.order)


def test_real_models_jacobian():
    D = 7
    order = torch.randperm(D)
    for model in (af.RNADE(D, 5, 3, order=order),
                  af.MADE(D, [8, 8], out="gaussian", K=2, order="random", num_masks=2, direct=True)):
        randomize(model, 0.5).double()
        x = torch.randn(2, D, dtype=torch.float64)
        _check_jacobian(model, x, model.order)


def test_categorical_models_perturbation():
    """Class inputs are not differentiable: change every input at or after d, params_d stay put."""
    D, K = 6, 3
    gen = torch.Generator().manual_seed(0)
    for model in (af.CategoricalNADE(D, 5, K, order=torch.randperm(D, generator=gen)),
                  af.MADE(D, [10], out="categorical", K=K, order="random", direct=True)):
        randomize(model)
        pos = positions(model.order)
        x = torch.randint(0, K, (4, D), generator=gen)
        base = model(x)
        changed_any = False
        for d in range(D):
            later = pos >= pos[d]
            x2 = x.clone()
            x2[:, later] = (x2[:, later] + 1) % K
            assert torch.equal(model(x2)[:, d], base[:, d])
            x3 = x.clone()
            x3[:, ~later] = (x3[:, ~later] + 1) % K
            changed_any |= not torch.allclose(model(x3)[:, d], base[:, d])
        assert changed_any


def test_made_context_is_unmasked():
    model = randomize(af.MADE(5, [8], context_dim=3))
    x = (torch.rand(2, 5) < 0.5).float()
    c = torch.randn(2, 3)
    first = model.order[0]
    assert not torch.allclose(model(x, c)[:, first], model(x, c + 1)[:, first])
