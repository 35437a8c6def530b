"""Fast MADE / FVSBN (masked_linear forward, one-pass sampling and inverse) against the reference."""
import itertools

import pytest
import torch

import armodel_fast as af
from armodel_fast.ops import made as made_ops
from armodel_fast.ops import masked_linear as ml_ops
from armodel_fast.ops.masked_linear import cache as ml_cache
from armodel_fast.reference import heads

from made_cases import CONFIGS, SKIP_WITHOUT_FAST, as_tuple, backends, data, pair

pytestmark = SKIP_WITHOUT_FAST


@backends
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_gradients_match_reference(backend, name):
    ref, fast = pair(name, backend)
    x, ctx = data(ref, 9)
    for _ in range(ref.num_masks):  # every mask set, switched on both models
        for a, b in zip(as_tuple(ref(x, ctx)), as_tuple(fast(x, ctx))):
            torch.testing.assert_close(b, a)
        assert fast.last_backend == backend
        ctx_r = ctx_f = None
        if ctx is not None:
            ctx_r, ctx_f = ctx.clone().requires_grad_(True), ctx.clone().requires_grad_(True)
        lr, lf = ref.log_prob(x, ctx_r), fast.log_prob(x, ctx_f)
        torch.testing.assert_close(lf, lr)
        gr = torch.autograd.grad(lr.sum(), list(ref.parameters()) + ([ctx_r] if ctx is not None else []))
        gf = torch.autograd.grad(lf.sum(), list(fast.parameters()) + ([ctx_f] if ctx is not None else []))
        for (pname, _), a, b in zip(list(ref.named_parameters()) + [("context", None)], gr, gf):
            torch.testing.assert_close(b, a, msg=lambda m: f"gradient of {pname}: {m}")
        ref.next_mask()
        fast.next_mask()


@backends
def test_ensemble_and_state_dict_unchanged(backend):
    ref, fast = pair("bernoulli-direct-context-masks", backend)
    assert list(ref.state_dict()) == list(fast.state_dict())
    x, ctx = data(ref, 5)
    torch.testing.assert_close(fast.log_prob(x, ctx, ensemble=3), ref.log_prob(x, ctx, ensemble=3))


@backends
def test_fp32_forward(backend):
    ref, fast = pair("categorical-direct", backend, dtype=torch.float32, D=23)
    x, _ = data(ref, 40)
    torch.testing.assert_close(fast.log_prob(x), ref.log_prob(x), atol=1e-4, rtol=1e-5)


@backends
@pytest.mark.parametrize("name", ["gaussian-mixture-context", "gaussian-flow"])
def test_autoregressive_jacobian(backend, name):
    _, fast = pair(name, backend, D=6)
    x, ctx = data(fast, 1)
    order = fast.order.tolist()
    for out in range(3):  # logits, mu, log_sigma
        jac = torch.autograd.functional.jacobian(lambda v: fast(v[None], ctx)[out][0, :, 0], x[0])
        for t, d in enumerate(order):
            allowed = set(order[:t])
            for e in range(fast.D):
                if e not in allowed:
                    assert jac[d, e] == 0, f"output {d} depends on x[{e}] (order {order})"


@backends
def test_normalisation(backend):
    _, fast = pair("bernoulli-direct-context-masks", backend, D=8)
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)), dtype=torch.float64)
    ctx = torch.randn(1, 3, dtype=torch.float64).expand(len(xs), 3)
    total = fast.log_prob(xs, ctx).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)


@backends
def test_gradcheck_fp64(backend):
    _, fast = pair("gaussian-flow", backend, D=4)
    x, ctx = data(fast, 2)
    names = [n for n, _ in fast.named_parameters()]

    def f(x, ctx, *ps):
        return torch.func.functional_call(fast, dict(zip(names, ps)), (x, ctx))

    inputs = (x.requires_grad_(True), ctx.requires_grad_(True)) + tuple(p.detach().clone().requires_grad_(True)
                                                                        for p in fast.parameters())
    with ml_ops.caching(False):  # gradcheck perturbs through .data, unseen by the version counter
        assert torch.autograd.gradcheck(f, inputs)


@backends
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampling_matches_d_pass_sampler(backend, name):
    ref, fast = pair(name, backend)
    n = 11
    u = torch.rand(ref.uniforms_shape(n), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, ctx = data(ref, n)
    for _ in range(ref.num_masks):
        xr, lr = ref.sample(n, u=u, context=ctx, return_log_prob=True)
        xf, lf = fast.sample(n, u=u, context=ctx, return_log_prob=True)
        assert xf.dtype == xr.dtype
        if ref.out == "gaussian":
            torch.testing.assert_close(xf, xr)
        else:
            assert torch.equal(xf, xr)
        torch.testing.assert_close(lf, lr)
        torch.testing.assert_close(lf, ref.log_prob(xr, ctx))
        ref.next_mask()
        fast.next_mask()


@backends
def test_sampling_fp32_differs_only_at_ties(backend):
    """In fp32 the two samplers round differently; the first step where a sample differs must
    have u within rounding of p."""
    ref, fast = pair("bernoulli-direct-context-masks", backend, dtype=torch.float32, D=30)
    n = 64
    u = torch.rand(n, ref.D, generator=torch.Generator().manual_seed(5))
    _, ctx = data(ref, n)
    xr = ref.sample(n, u=u, context=ctx)
    xf = fast.sample(n, u=u, context=ctx)
    p = torch.sigmoid(ref(xr, ctx))
    for s in torch.nonzero((xr != xf).any(1)).flatten().tolist():
        first = next(d for d in ref.order.tolist() if xr[s, d] != xf[s, d])
        assert abs(u[s, first] - p[s, first]) < 1e-4


@backends
def test_fvsbn(backend):
    order = torch.randperm(9, generator=torch.Generator().manual_seed(4))
    ref = af.FVSBN(9, order=order, dtype=torch.float64)
    with torch.no_grad():
        ref.linear.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
        ref.linear.bias.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    fast = af.FVSBN(9, order=order, dtype=torch.float64, backend=backend)
    fast.load_state_dict(ref.state_dict())
    u = torch.rand(13, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xr, lr = ref.sample(13, u=u, return_log_prob=True)
    xf, lf = fast.sample(13, u=u, return_log_prob=True)
    assert torch.equal(xf, xr)
    torch.testing.assert_close(lf, lr)
    lr, lf = ref.log_prob(xr), fast.log_prob(xr)
    torch.testing.assert_close(lf, lr)
    gr = torch.autograd.grad(lr.sum(), list(ref.parameters()))
    gf = torch.autograd.grad(lf.sum(), list(fast.parameters()))
    for a, b in zip(gr, gf):
        torch.testing.assert_close(b, a)


@backends
def test_heads_rules_match_reference_module(backend):
    """The categorical/mixture draw rules of the kernel against reference/heads.py on hard cases:
    a component with all the mass, u at the ends of [0, 1]."""
    ref, fast = pair("gaussian-mixture-context", backend, D=5)
    u = torch.tensor([[[0.0, 1e-9], [1.0, 1.0], [0.5, 0.5], [1e-7, 0.3], [0.999999, 0.0]]], dtype=torch.float64)
    _, ctx = data(ref, 1)
    xr, lr = ref.sample(1, u=u, context=ctx, return_log_prob=True)
    xf, lf = fast.sample(1, u=u, context=ctx, return_log_prob=True)
    torch.testing.assert_close(xf, xr)
    torch.testing.assert_close(lf, lr)
    assert heads.U_EPS == 1e-6  # the kernel clamps with the same constant


@backends
def test_made_sample_rejects_inconsistent_degrees(backend):
    _, fast = pair("bernoulli", backend)
    hidden, output, direct, ctx_w = fast._layer_args()
    wrong = (output[0], output[1], output[2], output[3].flip(0))
    with pytest.raises(ValueError, match="degrees"):
        made_ops.made_sample(hidden, wrong, fast.order, torch.rand(2, fast.D, dtype=torch.float64))
    with pytest.raises(ValueError, match="head"):
        made_ops.made_sample(hidden, output, fast.order, torch.rand(2, fast.D, dtype=torch.float64), head="poisson")
    m0 = fast.degrees()[0].flip(0)  # a direct layer wired for another order
    with pytest.raises(ValueError, match="direct"):
        made_ops.made_sample(hidden, output, fast.order, torch.rand(2, fast.D, dtype=torch.float64),
                             direct_layer=(torch.zeros(fast.D, fast.D, dtype=output[0].dtype), m0, m0))


@backends
def test_torch_compile_fullgraph(backend):
    ref, fast = pair("bernoulli-direct-context-masks", backend, dtype=torch.float32)
    x, ctx = data(ref, 4)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")  # no graph break allowed
    out = compiled(x, ctx)
    torch.testing.assert_close(out, ref(x, ctx))
    assert fast.last_backend == backend
    heads.bernoulli_log_prob(out, x).sum().backward()  # the custom op's autograd traced too
    lr = ref.log_prob(x, ctx)
    gr = torch.autograd.grad(lr.sum(), list(ref.parameters()))
    for (pname, p), g in zip(fast.named_parameters(), gr):
        torch.testing.assert_close(p.grad, g, msg=lambda m: f"{pname}: {m}")


@backends
@pytest.mark.parametrize("out, K", [("bernoulli", None), ("categorical", 3), ("gaussian", 2)])
def test_one_dimension(backend, out, K):
    """D = 1: no hidden unit can feed the output (they get degree D); only biases/direct/context matter."""
    ref = af.MADE(1, [4], out=out, K=K, direct=True, context_dim=2, dtype=torch.float64)
    fast = af.MADE(1, [4], out=out, K=K, direct=True, context_dim=2, dtype=torch.float64, backend=backend)
    fast.load_state_dict(ref.state_dict())
    u = torch.rand(ref.uniforms_shape(5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ctx = torch.randn(5, 2, dtype=torch.float64)
    xr, lr = ref.sample(5, u=u, context=ctx, return_log_prob=True)
    xf, lf = fast.sample(5, u=u, context=ctx, return_log_prob=True)
    torch.testing.assert_close(xf, xr)
    torch.testing.assert_close(lf, lr)
    torch.testing.assert_close(fast.log_prob(xr, ctx), ref.log_prob(xr, ctx))


@backends
def test_made_sample_names_bad_noise_and_K(backend):
    """Checked before any kernel runs, for every backend (the Triton launcher has no C++ checks)."""
    _, fast = pair("bernoulli", backend)
    hidden, output, _, _ = fast._layer_args()
    D, order = fast.D, fast.order
    for bad in (torch.rand(2, D + 1, dtype=torch.float64), torch.rand(2, D, 2, dtype=torch.float64),
                torch.rand(D, dtype=torch.float64)):
        with pytest.raises(ValueError, match="noise"):
            made_ops.made_sample(hidden, output, order, bad, backend=backend)
    with pytest.raises(TypeError, match="noise"):
        made_ops.made_sample(hidden, output, order, torch.zeros(2, D, dtype=torch.long), backend=backend)
    with pytest.raises(ValueError, match="noise"):  # a mixture head needs u [n, D, 2]
        made_ops.made_sample(hidden, output, order, torch.rand(2, D, dtype=torch.float64), head="gaussian",
                             K=1, backend=backend)
    with pytest.raises(ValueError, match="K"):
        made_ops.made_sample(hidden, output, order, torch.rand(2, D, dtype=torch.float64), head="categorical",
                             K=1, backend=backend)
    with pytest.raises(ValueError, match="K"):  # the affine flow inverse has one Gaussian per dimension
        made_ops.made_sample(hidden, output, order, torch.rand(2, D, dtype=torch.float64), head="affine",
                             K=2, backend=backend)


@backends
@pytest.mark.parametrize("out, K", [("bernoulli", None), ("categorical", 3), ("gaussian", 2)])
def test_empty_batch(backend, out, K):
    fast = af.MADE(5, [8], out=out, K=K, backend=backend)
    x = torch.zeros(0, fast.D, dtype=torch.long if out == "categorical" else fast.dtype)
    lp = fast.log_prob(x)
    assert lp.shape == (0,)


@backends
@pytest.mark.parametrize("name", ["bernoulli-direct-context-masks", "categorical-direct", "gaussian-flow"])
def test_functional_made_sample_reference_and_auto(backend, name):
    """ops.made.made_sample takes backend="reference" (the D-pass oracle) and "auto"."""
    ref, fast = pair(name, backend)
    hidden, output, direct, ctx_w = fast._layer_args()
    n = 5
    head = "affine" if name == "gaussian-flow" else fast.out
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(n, fast.D, generator=g, dtype=torch.float64) if head == "affine" else \
        torch.rand((n, fast.D) + fast.uniform_trailing, generator=g, dtype=torch.float64)
    ctx = None if fast.context_dim == 0 else torch.randn(n, fast.context_dim, generator=g, dtype=torch.float64)
    args = (hidden, output, fast.order, noise, head, None if head == "affine" else fast.K, fast.activation,
            direct, ctx, ctx_w)
    xr, lr = made_ops.made_sample(*args, backend="reference")
    xf, lf = made_ops.made_sample(*args, backend=backend)
    xa, la = made_ops.made_sample(*args, backend="auto")
    if head == "affine":
        want = ref.inverse(noise, ctx)
    else:
        want = ref.sample(n, u=noise, context=ctx, return_log_prob=True)
    for x, lp in ((xr, lr), (xf, lf), (xa, la)):
        torch.testing.assert_close(x, want[0])
        torch.testing.assert_close(lp, want[1])


@backends
def test_functional_made_checks_backend_and_uniforms(backend):
    _, fast = pair("bernoulli", backend)
    hidden, output, _, _ = fast._layer_args()
    x = torch.ones(2, fast.D, dtype=torch.float64)
    torch.testing.assert_close(made_ops.made_forward(x, hidden, output, backend="auto"),
                               made_ops.made_forward(x, hidden, output, backend="reference"))
    with pytest.raises(ValueError, match="backend"):
        made_ops.made_forward(x, hidden, output, backend="bogus")
    with pytest.raises(ValueError, match="backend"):
        made_ops.made_sample(hidden, output, fast.order, torch.rand(2, fast.D, dtype=torch.float64),
                             backend="bogus")
    for bad in (float("nan"), -0.5, 1.5):
        u = torch.full((2, fast.D), bad, dtype=torch.float64)
        with pytest.raises(ValueError, match="noise must hold uniforms"):
            made_ops.made_sample(hidden, output, fast.order, u, backend=backend)
        w, b, din, _ = output
        with pytest.raises(ValueError, match="u must hold uniforms"):
            made_ops.fvsbn_sample(w[:fast.D, :fast.D].contiguous(), b[:fast.D], torch.arange(1, fast.D + 1),
                                  fast.order, u, backend=backend)
    z = torch.full((2, fast.D), float("inf"), dtype=torch.float64)
    with pytest.raises(ValueError, match="noise must be finite"):
        made_ops.made_sample(hidden, output, fast.order, z, head="affine", backend=backend)


@backends
@torch.no_grad()  # calls without a graph are the ones that reuse cached weights
def test_writes_through_data_are_seen(backend):
    """The prepared-weight cache is keyed on version counters, which ``.data`` writes bypass:
    bulk writes are caught by its spot checks (MADE with a direct layer, FVSBN with D = 64,
    where evenly spaced spots would all fall on the strict mask's zero diagonal)."""
    ref, fast = pair("bernoulli-direct-context-masks", backend)
    x, ctx = data(ref, 5)
    torch.testing.assert_close(fast.log_prob(x, ctx), ref.log_prob(x, ctx))
    stale = ml_ops.cache_info()["stale"]
    edits = [lambda w: w.mul_(3), lambda w: w.normal_(0, 0.5, generator=torch.Generator().manual_seed(9)),
             lambda w: w.copy_(torch.flip(w, (0,)))]
    for edit in edits:
        for model in (ref, fast):
            for layer in list(model.layers) + [model.output, model.direct]:
                edit(layer.weight.data)
        torch.testing.assert_close(fast.log_prob(x, ctx), ref.log_prob(x, ctx))
    assert ml_ops.cache_info()["stale"] > stale
    D = 64  # 64 evenly spaced entries of a 64 x 64 matrix are its diagonal
    fv = af.FVSBN(D, dtype=torch.float64, backend=backend)
    fv.linear.weight.normal_(generator=torch.Generator().manual_seed(1)).mul_(fv.linear.mask())
    fr = af.FVSBN(D, dtype=torch.float64)
    fr.load_state_dict(fv.state_dict())
    xb = torch.randint(0, 2, (4, D), generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(fv.log_prob(xb), fr.log_prob(xb))
    for edit in (lambda w: w.mul_(0.5), lambda w: w.fill_(1.0)):
        edit(fv.linear.weight.data)
        edit(fr.linear.weight.data)
        torch.testing.assert_close(fv.log_prob(xb), fr.log_prob(xb))


@backends
def test_fused_optimizer_steps_are_seen(backend):
    """Adam(fused=True) does not bump version counters: training forwards never trust the cache,
    and the first evaluation after a step rebuilds, even for an update that misses every spot."""
    torch.manual_seed(0)
    n = 200
    layers = {b: af.MaskedLinear(n, n, torch.arange(n), torch.arange(n), backend=b, dtype=torch.float64)
              for b in ("reference", backend)}
    layers[backend].load_state_dict(layers["reference"].state_dict())
    layer = layers[backend]
    _, spot_cols, live = ml_cache._spot_positions(layer.weight, layer.in_degrees, layer.out_degrees, False)
    cols = [c for c in range(n // 2) if c not in set(spot_cols[live].tolist())][:2]
    assert len(cols) == 2
    x = torch.zeros(6, n, dtype=torch.float64)
    for step, col in enumerate(cols + cols[:1]):  # sparse updates (one input column) that miss every spot
        x.zero_()
        x[:, col] = 1.0
        outs = {}
        for b, layer in layers.items():
            opt = torch.optim.Adam(layer.parameters(), lr=0.3, fused=True)
            with torch.no_grad():
                layer(x)  # an evaluation call: builds (or reuses) a cache entry
            loss = layer(x).pow(2).sum()
            with torch.no_grad():
                layer(x)  # an evaluation between forward and backward (logging): its entry serves the backward
            loss.backward()
            opt.step()
            with torch.no_grad():
                outs[b] = layer(x)
        torch.testing.assert_close(outs[backend], outs["reference"], msg=lambda m: f"step {step}: {m}")
        torch.testing.assert_close(outs[backend], torch.nn.functional.linear(
            x, layers[backend].weight * layers[backend].mask(), layers[backend].bias))


@backends
def test_functional_made_forward_auto_under_compile(backend):
    _, fast = pair("bernoulli", backend)
    hidden, output, _, _ = fast._layer_args()
    x = torch.ones(3, fast.D, dtype=torch.float64)
    fn = torch.compile(lambda t: made_ops.made_forward(t, hidden, output, backend="auto"), fullgraph=True,
                       backend="aot_eager")
    torch.testing.assert_close(fn(x), made_ops.made_forward(x, hidden, output, backend="reference"))
