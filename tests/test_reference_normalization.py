"""Whole-model check: probabilities of every configuration sum to 1 (docs/DESIGN.md section 6)."""

import pytest
import torch

import armodel_fast as af
from model_zoo import all_binary, all_categorical, binary_models, randomize


@pytest.mark.parametrize("D", [1, 3, 7, 12])
def test_binary_models_sum_to_one(D):
    x = all_binary(D, torch.float64)
    for name, model in binary_models(D, seed=D):
        model.double()
        total = torch.exp(model.log_prob(x)).sum().item()
        assert abs(total - 1) < 1e-5, f"{name}: sum of p over 2^{D} = {total}"


def test_made_every_mask_and_ensemble_sums_to_one():
    D = 8
    model = randomize(af.MADE(D, [10, 10], num_masks=4, order="random", direct=True, seed=3)).double()
    x = all_binary(D, torch.float64)
    for _ in range(4):
        assert abs(torch.exp(model.log_prob(x)).sum().item() - 1) < 1e-5
        model.next_mask()
    assert abs(torch.exp(model.log_prob(x, ensemble=4)).sum().item() - 1) < 1e-5


@pytest.mark.parametrize("D,K", [(1, 4), (3, 3), (5, 2)])
def test_categorical_models_sum_to_one(D, K):
    x = all_categorical(D, K)
    for model in (af.CategoricalNADE(D, 6, K, order=torch.randperm(D)),
                  af.MADE(D, [12], out="categorical", K=K, direct=True, order="random")):
        randomize(model).double()
        assert abs(torch.exp(model.log_prob(x)).sum().item() - 1) < 1e-5


def _grid(D, n=400, lim=12.0):
    pts = torch.linspace(-lim, lim, n, dtype=torch.float64)
    step = (pts[1] - pts[0]).item()
    grid = torch.cartesian_prod(*([pts] * D)).reshape(-1, D)
    return grid, step ** D


@pytest.mark.parametrize("D", [1, 2])
def test_real_models_integrate_to_one(D):
    """Riemann sum of the density on a fine grid (tails beyond +-12 are negligible)."""
    grid, cell = _grid(D, n=1200 if D == 1 else 300)
    for model in (af.RNADE(D, 5, 3), af.MADE(D, [6], out="gaussian", K=2)):
        randomize(model, 0.3).double()
        total = (torch.exp(model.log_prob(grid)) * cell).sum().item()
        assert abs(total - 1) < 2e-3, f"{type(model).__name__}: integral {total}"
