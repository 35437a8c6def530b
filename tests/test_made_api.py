"""af.MADE takes what the flow libraries pass (batch shapes, broadcast context, hidden as an
int, activation classes) and its affine head bounds the scale the same way on every backend."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import armodel_fast as af
from armodel_fast import _backend
from armodel_fast.ops import made as made_ops
from armodel_fast.reference import made as ref_made

FAST = [b for b in ("cpp", "triton") if _backend._why_not(b, "made_sample", torch.device("cpu")) is None]
BACKENDS = ["reference"] + [b for b in FAST if b == "cpp"]


def flow(backend="reference", D=6, context_dim=3, scale="soft_clip", seed=0, spread=0.6, residual=None):
    model = af.MADE(D, [11, 9], out="gaussian", direct=True, context_dim=context_dim, order="random",
                    seed=seed, dtype=torch.float64, scale=scale, backend=backend, residual=residual)
    with torch.no_grad():  # large raw scales, so the soft clip matters
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.normal_(0, spread, generator=g)
    return model


@pytest.mark.parametrize("hidden, want", [(7, [7]), ((5, 4), [5, 4]), ([3], [3])])
def test_hidden_int_or_sequence(hidden, want):
    assert af.MADE(4, hidden).hidden == want


@pytest.mark.parametrize("hidden", [[], [0], "12", 2.5, True, [3, None]])
def test_bad_hidden_is_named(hidden):
    with pytest.raises((TypeError, ValueError), match="hidden"):
        af.MADE(4, hidden)


@pytest.mark.parametrize("activation, name", [(nn.ELU, "elu"), (nn.Tanh(), "tanh"), (F.relu, "relu"),
                                              (nn.Identity, "none"), ("tanh", "tanh"), (torch.tanh, "tanh")])
def test_activation_class_instance_or_function(activation, name):
    assert af.MADE(4, 5, activation=activation).activation == name


@pytest.mark.parametrize("activation", [nn.GELU, "gelu", F.silu, 3])
def test_unsupported_activation_is_named(activation):
    with pytest.raises(ValueError, match="activation"):
        af.MADE(4, 5, activation=activation)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_batch_dims_and_unbatched(backend):
    model = flow(backend)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    c = torch.randn(3, 4, 3, generator=g, dtype=torch.float64)
    flat_z, flat_ld = model.transform(x.reshape(12, 6), c.reshape(12, 3))
    z, ld = model.transform(x, c)
    assert z.shape == (3, 4, 6) and ld.shape == (3, 4)
    torch.testing.assert_close(z.reshape(12, 6), flat_z)
    torch.testing.assert_close(ld.reshape(12), flat_ld)
    x_back, ld_inv = model.inverse(z, c)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld_inv, -ld)
    assert model.log_prob(x, c).shape == (3, 4)
    assert [t.shape for t in model(x, c)] == [(3, 4, 6, 1)] * 3
    z1, ld1 = model.transform(x[1, 2], c[1, 2])  # unbatched
    assert z1.shape == (6,) and ld1.shape == ()
    torch.testing.assert_close(z1, z[1, 2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_broadcasts_over_the_batch(backend):
    model = flow(backend)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 6, generator=g, dtype=torch.float64)
    c = torch.randn(3, generator=g, dtype=torch.float64)
    x, ld = model.inverse(z, c)
    x_full, ld_full = model.inverse(z, c.expand(5, 3))
    torch.testing.assert_close(x, x_full)
    torch.testing.assert_close(ld, ld_full)
    assert model.sample(4, context=c).shape == (4, 6)
    with pytest.raises(ValueError, match="context"):
        model.inverse(z, torch.randn(4, 3, dtype=torch.float64))  # batch 4 does not broadcast with 5
    with pytest.raises(ValueError, match="context"):
        model.inverse(z, torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="z"):
        model.inverse(torch.randn(5, 7, dtype=torch.float64), c)


def test_soft_clip_bounds_log_sigma_and_keeps_small_values():
    raw = torch.tensor([-1e6, -50.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 50.0, 1e6], dtype=torch.float64)
    s = ref_made.bounded_log_sigma(raw)
    bound = math.log(1e3)
    assert bool((s.abs() < bound).all()) and bool((torch.sign(s) == torch.sign(raw)).all())
    torch.testing.assert_close(s[3:6], raw[3:6], rtol=1e-3, atol=0)  # ~identity near 0
    torch.testing.assert_close(s, raw / (1 + raw.abs() / bound))
    assert torch.equal(ref_made.bounded_log_sigma(raw, clip=False), raw)


@pytest.mark.parametrize("scale", ["soft_clip", "raw"])
def test_transform_uses_the_chosen_scale(scale):
    model = flow(scale=scale, spread=2.0)
    raw_model = flow(scale="raw", spread=2.0)  # same parameters, unbounded outputs
    g = torch.Generator().manual_seed(0)  # not the global generator: values that overflow the raw scale's
    x = torch.randn(4, 6, dtype=torch.float64, generator=g)  # samples below occur for ~3% of draws
    c = torch.randn(4, 3, dtype=torch.float64, generator=g)
    _, mu, raw = raw_model(x, c)
    s = raw[..., 0] / (1 + raw[..., 0].abs() / math.log(1e3)) if scale == "soft_clip" else raw[..., 0]
    torch.testing.assert_close(model(x, c)[2][..., 0], s)  # forward gives the log sigma in use
    z, ld = model.transform(x, c)
    torch.testing.assert_close(z, (x - mu[..., 0]) * torch.exp(-s))
    torch.testing.assert_close(ld, -s.sum(-1))
    std_normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_prob(x, c), std_normal + ld)  # density = change of variables
    small = flow(scale=scale, spread=0.3)  # samples of the large-weight model overflow: they compound over steps
    x_s, lp_s = small.sample(5, context=c[0], return_log_prob=True, generator=g)
    torch.testing.assert_close(lp_s, small.log_prob(x_s, c[0]))
    if scale == "soft_clip":
        assert float(raw.detach().abs().max()) > math.log(1e3) / 2  # the clip is not a no-op here


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("head", ["affine", "affine_raw"])
def test_fast_affine_heads_match_reference(backend, head):
    # Large raw scales that still give finite samples (most seeds at spread 1.5 overflow with the
    # raw scale; seed 5 does not, and its raw log|det| exceeds what the clip allows).
    model = flow(spread=1.5, seed=5)
    hidden, output, direct, ctx_w = model._layer_args()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(9, 6, generator=g, dtype=torch.float64)
    c = torch.randn(9, 3, generator=g, dtype=torch.float64)
    args = (hidden, output, model.order, z, head, None, model.activation, direct, c, ctx_w)
    want_x, want_ld = ref_made.made_sample(*args)
    got_x, got_ld = made_ops.made_sample(*args, backend=backend)
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_ld, want_ld)
    assert (head == "affine") == bool(want_ld.abs().max() < 6 * math.log(1e3))


@pytest.mark.parametrize("backend", [pytest.param("reference", marks=pytest.mark.slow)] + BACKENDS[1:])
def test_fresh_flow_samples_are_finite_at_784(backend):
    """10,000 samples of a fresh D=784 flow with direct connections and a context are all finite."""
    torch.manual_seed(0)
    model = af.MADE(784, [256, 256], out="gaussian", direct=True, context_dim=10, backend=backend)
    n = 10_000 if backend != "reference" else 16  # the reference runs 784 passes
    with torch.no_grad():
        x, ld = model.inverse(torch.randn(n, 784), torch.randn(n, 10) * 3)
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(ld).all())
    assert float(x.abs().max()) < 1e3


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_inverse_compiles_whole(backend):
    """torch.compile(fullgraph=True) of inverse (sampling, no gradients) on every backend:
    the fast samplers are one custom op in the graph; results equal eager ones."""
    torch._dynamo.reset()
    model = flow(backend, spread=0.3)
    z = torch.randn(5, 6, dtype=torch.float64)
    c = torch.randn(3, dtype=torch.float64)  # broadcast over the batch, also under compile
    with torch.no_grad():
        explained = torch._dynamo.explain(model.inverse)(z, c)
        assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
        got = torch.compile(model.inverse, fullgraph=True)(z, c)
        want = model.inverse(z, c)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", ["reference"] + FAST)
@pytest.mark.parametrize("residual", [None, "preact"])
def test_inverse_with_gradients_compiles_whole(backend, residual):
    """torch.compile(fullgraph=True) of inverse with gradients on every backend, residual blocks
    too: the fast inverse is one custom op whose backward is another (the reverse sweep);
    gradients for z, the context and every parameter equal eager ones."""
    torch._dynamo.reset()
    model = flow(backend, spread=0.3, residual=residual)
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    explained = torch._dynamo.explain(model.inverse)(z, c)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    inputs = [z, c] + list(model.parameters())
    x, ld = torch.compile(model.inverse, fullgraph=True)(z, c)
    got = torch.autograd.grad((x.sin().sum() + ld.square().sum()), inputs)
    x, ld = model.inverse(z, c)
    want = torch.autograd.grad((x.sin().sum() + ld.square().sum()), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_affine_layer_has_two_outputs_per_dimension_and_loads_the_three_row_layout():
    """The K=1 Gaussian (affine flow) layer keeps mu and log sigma per dimension (no mixture logit,
    whose gradient is always zero); a state saved with (logit, mu, log sigma) rows loads into it."""
    model = flow(seed=2)
    D = model.D
    assert model.output.weight.shape[0] == 2 * D and model.direct.weight.shape[0] == 2 * D
    assert model.context_out.weight.shape[0] == 2 * D
    x = torch.randn(5, D, dtype=torch.float64)
    c = torch.randn(5, 3, dtype=torch.float64)
    logits, mu, ls = model(x, c)
    assert logits.shape == mu.shape == (5, D, 1) and not bool(logits.any())
    old = {}  # the layout saved before: 3 rows (logit, mu, log sigma) per dimension, and their degrees
    for k, v in model.state_dict().items():
        if k in ("output.weight", "output.bias", "direct.weight", "context_out.weight", "output.out_degrees",
                 "direct.out_degrees"):
            junk = v.unflatten(0, (D, 2))[:, :1]
            junk = junk if k.endswith("degrees") else torch.full_like(junk, 7.0)  # logit rows: dropped on load
            v = torch.cat([junk, v.unflatten(0, (D, 2))], 1).flatten(0, 1)
            assert v.shape[0] == 3 * D
        old[k] = v
    again = flow(seed=3)
    again.load_state_dict(old)
    for got, want in zip(again(x, c), (logits, mu, ls)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(again.log_prob(x, c), model.log_prob(x, c))


@pytest.mark.parametrize("scale", ["soft_clip", "raw"])
def test_affine_sample_draws_z_in_the_model_dtype(scale):
    """sample() of the K=1 layer is inverse(z) at z = Phi^-1(u[..., 1]) computed in float64 for a
    float64 model (float32 only for half types), as the mixture head computes it."""
    model = flow(scale=scale, seed=4, spread=0.3)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(7, model.D, 2, dtype=torch.float64, generator=g)
    c = torch.randn(7, 3, dtype=torch.float64, generator=g)
    x, lp = model.sample(7, u=u, context=c, return_log_prob=True)
    z = torch.special.ndtri(u[..., 1].clamp(1e-6, 1 - 1e-6))
    want, logdet = model.inverse(z, c)
    torch.testing.assert_close(x, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp, model.log_prob(x, c).detach(), rtol=1e-10, atol=1e-10)


def test_whole_model_pickles_with_its_mask_state():
    """pickle / torch.save of the whole module (not only its state_dict) keeps the weights, the
    current mask set and load_state_dict's hook (which must be picklable: no lambda)."""
    import pickle
    m = af.MADE(6, [8, 8], num_masks=3, out="gaussian", K=1, context_dim=2, residual="linear", seed=3)
    m.next_mask()
    copy = pickle.loads(pickle.dumps(m))
    x, c = torch.randn(4, 6), torch.randn(4, 2)
    assert int(copy.mask_index) == 1 and torch.equal(copy.order, m.order)
    torch.testing.assert_close(copy.log_prob(x, c), m.log_prob(x, c), rtol=0, atol=0)
    m.next_mask()
    copy.load_state_dict(m.state_dict())  # the hook survived: the loaded mask set is the one used
    torch.testing.assert_close(copy.log_prob(x, c), m.log_prob(x, c), rtol=0, atol=0)


def test_parametrized_layers_run_on_every_backend():
    """parametrize / weight_norm / spectral_norm on MADE's layers (the weight is no longer in the
    layer's parameter dict): the same log-probs and gradients on the kernels as on the reference."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w
    x = (torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    results = []
    for backend in ["reference"] + (["cpp"] if af.explain("made").splitlines()[1].startswith("cpp: yes") else []):
        torch.manual_seed(0)
        m = af.MADE(5, [8, 8], backend=backend)
        parametrize.register_parametrization(m.layers[0], "weight", Double())
        weight_norm(m.layers[1])
        spectral_norm(m.output)
        lp = m.log_prob(x)
        lp.sum().backward()
        results.append((lp.detach(), m.layers[0].parametrizations.weight.original.grad))
    for lp, g in results[1:]:
        torch.testing.assert_close(lp, results[0][0])
        torch.testing.assert_close(g, results[0][1])


def test_averaged_model_with_buffers_follows_the_mask_set():
    """AveragedModel(use_buffers=True) copies mask_index without set_mask: the copy's Python mirror
    of it follows (its sampling and log-probs use the copied mask set)."""
    from torch.optim.swa_utils import AveragedModel
    torch.manual_seed(0)
    m = af.MADE(5, [8], num_masks=3, order="random")
    avg = AveragedModel(m, use_buffers=True)
    m.next_mask()
    avg.update_parameters(m)
    x = torch.ones(2, 5)
    torch.testing.assert_close(avg.module.log_prob(x), m.log_prob(x))
    assert torch.equal(avg.module.order, m.order)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(avg.module.sample(3, generator=g), m.sample(3, generator=torch.Generator().manual_seed(0)))
