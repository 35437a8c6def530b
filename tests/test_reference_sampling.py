"""Sampling with caller-supplied uniforms: deterministic, exact in law, consistent with log_prob."""
import pytest
import torch
from scipy.stats import chi2

import armodel_fast as af
from model_zoo import all_binary, binary_models, randomize


def _all_models(D):
    models = [m for _, m in binary_models(D, seed=1)]
    models += [randomize(af.CategoricalNADE(D, 5, 3, order=torch.randperm(D))),
               randomize(af.MADE(D, [8], out="categorical", K=3)),
               randomize(af.RNADE(D, 5, 2), 0.4),
               randomize(af.MADE(D, [8], out="gaussian", K=2, order="random"), 0.4)]
    return models


def test_same_u_same_samples_and_log_prob_matches():
    D, n = 6, 50
    for model in _all_models(D):
        model.double()
        u = torch.rand(model.uniforms_shape(n), dtype=torch.float64)
        x1, lp1 = model.sample(n, u=u, return_log_prob=True)
        x2 = model.sample(n, u=u.clone())
        assert torch.equal(x1, x2), type(model).__name__
        torch.testing.assert_close(model.log_prob(x1), lp1, msg=type(model).__name__)


def test_generator_makes_sampling_reproducible():
    model = randomize(af.NADE(5, 4))
    a = model.sample(7, generator=torch.Generator().manual_seed(3))
    b = model.sample(7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["fvsbn", "nade", "made", "made-direct-masks", "arrnn-gru"])
def test_sample_frequencies_match_exact_probabilities(name):
    """Chi-square goodness of fit over all 2^D outcomes, fixed seed."""
    D, n = 3, 20000
    model = dict(binary_models(D, seed=5))[name].double()
    gen = torch.Generator().manual_seed(1234)
    x = model.sample(n, generator=gen)
    idx = (x.long() * (2 ** torch.arange(D - 1, -1, -1))).sum(-1)
    observed = torch.bincount(idx, minlength=2 ** D).double()
    grid = all_binary(D, torch.float64)
    expected = torch.exp(model.log_prob(grid)).detach() * n
    stat = ((observed - expected) ** 2 / expected).sum().item()
    assert stat < chi2.ppf(0.999, df=2 ** D - 1), f"{name}: chi2 = {stat:.1f}"


def test_categorical_sample_frequencies():
    D, K, n = 2, 3, 20000
    model = randomize(af.CategoricalNADE(D, 4, K)).double()
    x = model.sample(n, generator=torch.Generator().manual_seed(0))
    observed = torch.bincount(x[:, 0] * K + x[:, 1], minlength=K * K).double()
    grid = torch.cartesian_prod(torch.arange(K), torch.arange(K))
    expected = torch.exp(model.log_prob(grid)).detach() * n
    stat = ((observed - expected) ** 2 / expected).sum().item()
    assert stat < chi2.ppf(0.999, df=K * K - 1)


def test_inverse_cdf_rules():
    """The documented rules, on hand-picked numbers."""
    from armodel_fast.reference import heads
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    for u, want in [(0.0, 0), (0.19, 0), (0.21, 1), (0.49, 1), (0.51, 2), (1.0, 2)]:
        assert heads.categorical_sample(logits, torch.tensor([u])).item() == want
    assert heads.bernoulli_sample(torch.tensor([0.0]), torch.tensor([0.49])).item() == 1
    assert heads.bernoulli_sample(torch.tensor([0.0]), torch.tensor([0.51])).item() == 0
    x = heads.gaussian_mixture_sample(torch.zeros(1, 2), torch.tensor([[-5.0, 5.0]]), torch.zeros(1, 2),
                                      torch.tensor([[0.7, 0.5]]))
    assert x.item() == 5.0


def test_made_flow_inverse_and_transform_agree():
    model = randomize(af.MADE(6, [10, 10], out="gaussian", order="random", direct=True), 0.3).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    z, logdet = model.transform(x)
    x_back, logdet_inv = model.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(logdet_inv, -logdet)
    # change of variables: log p(x) = log N(z; 0, 1) + log|dz/dx|
    std_normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_prob(x), std_normal + logdet)
