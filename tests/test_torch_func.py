"""torch.func transforms (vmap, grad, jacrev) over the models: ``auto`` and ``reference`` run
the reference math there (the kernels have no functorch rules) and give what plain autograd
and a Python loop give; an explicit kernel backend is refused with the reason and the fix. The same inside a
forward-mode AD level (torch.autograd.forward_ad.dual_level), where the kernels would drop the tangents."""
import warnings

import pytest
import torch

import armodel_fast as af
from armodel_fast import dispatch

D = 5
BACKENDS = ["reference", "auto"]


def _flow(backend, context_dim=0):
    torch.manual_seed(0)
    return af.MADE(D, [12, 12], out="gaussian", context_dim=context_dim, backend=backend, seed=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jacrev_of_the_flow_transform_is_the_autograd_jacobian(backend):
    m = _flow(backend)
    x = torch.randn(1, D, dtype=torch.float32)
    jac = torch.func.jacrev(lambda v: m.transform(v)[0])(x)
    assert m.last_backend == "reference"  # resolved inside the transform
    want = torch.autograd.functional.jacobian(lambda v: m.transform(v)[0], x)
    torch.testing.assert_close(jac, want)
    # the log-determinant is the log of the (triangular) Jacobian's determinant
    logdet = m.transform(x)[1]
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac.reshape(D, D))[1], atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def no_size_rule(monkeypatch):
    """auto takes the C++ kernels at these tiny sizes too (outside a transform), so that the
    tests see auto leave them for the reference inside one."""
    monkeypatch.setattr(dispatch, "size_rule_says", lambda op, work: None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_of_the_log_det_matches_autograd(backend):
    m = _flow(backend, context_dim=2)
    x, c = torch.randn(4, D), torch.randn(4, 2)
    got = torch.func.grad(lambda v: m.transform(v, c)[1].sum())(x)
    v = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(m.transform(v, c)[1].sum(), v)
    torch.testing.assert_close(got, want)
    if backend == "auto" and dispatch._why_not("cpp", "made", torch.device("cpu")) is None:
        assert m.last_backend == "cpp"  # outside the transform, the kernels


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_over_rows_matches_the_batched_call(backend):
    m = _flow(backend)
    x = torch.randn(6, D)
    z, logdet = torch.func.vmap(lambda row: m.transform(row))(x)  # [D] rows: the unbatched form
    zb, lb = m.transform(x)
    torch.testing.assert_close(z, zb)
    torch.testing.assert_close(logdet, lb)
    xs, _ = torch.func.vmap(lambda row: m.inverse(row))(zb)
    torch.testing.assert_close(xs, x, atol=1e-5, rtol=1e-5)


MODELS = {"nade": lambda b: af.NADE(D, 7, backend=b), "fvsbn": lambda b: af.FVSBN(D, backend=b),
          "made": lambda b: af.MADE(D, [9], backend=b, seed=0),
          "categorical_nade": lambda b: af.CategoricalNADE(D, 7, 3, backend=b),
          "made_categorical": lambda b: af.MADE(D, [9], out="categorical", K=3, backend=b, seed=0),
          "rnade": lambda b: af.RNADE(D, 7, 2, backend=b)}


def _data(name):
    if "categorical" in name:
        return torch.randint(0, 3, (3, D))
    return torch.randn(3, D) if name == "rnade" else (torch.rand(3, D) < 0.5).float()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_per_example_gradients_by_vmap_of_grad(name, backend):
    """The classic torch.func use: per-example parameter gradients, vmap(grad(loss))."""
    torch.manual_seed(1)
    m = MODELS[name](backend)
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = _data(name)

    def loss(p, row):
        return -_log_prob_with(m, p, row[None]).sum()

    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        m.zero_grad(set_to_none=True)
        (-m.log_prob(x[i:i + 1]).sum()).backward()
        for k, p in m.named_parameters():
            torch.testing.assert_close(per_example[k][i], p.grad, msg=lambda s: f"{name} d{k}, row {i}: {s}")


def _log_prob_with(model, params, x):
    """model.log_prob(x) with ``params`` in place of its parameters (torch.func.functional_call)."""
    class Call(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, v):
            return self.inner.log_prob(v)
    return torch.func.functional_call(Call(model), {f"inner.{k}": v for k, v in params.items()}, (x,))


def test_an_explicit_kernel_backend_is_refused_with_the_fix():
    if dispatch._why_not("cpp", "made", torch.device("cpu")) is not None:
        pytest.skip("the C++ extension is not built")
    m = _flow("cpp")
    with pytest.raises(af.BackendUnavailableError, match="torch.func transform.*backend='auto' or 'reference'"):
        torch.func.grad(lambda v: m.transform(v)[1].sum())(torch.randn(2, D))
    z, _ = m.transform(torch.randn(2, D))  # outside a transform the kernels run again
    assert m.last_backend == "cpp" and z.shape == (2, D)


def test_a_zuko_flow_of_our_layers_under_jacrev_and_vmap():
    pytest.importorskip("zuko")
    from armodel_fast.flows.zuko import MAF
    torch.manual_seed(0)
    flow = MAF(4, 0, transforms=2, hidden_features=[16, 16])  # backend="auto"
    x = torch.randn(4)
    transform = flow().transform
    torch.testing.assert_close(torch.func.jacrev(transform)(x), torch.autograd.functional.jacobian(transform, x))
    xs = torch.randn(3, 4)
    torch.testing.assert_close(torch.func.vmap(lambda v: flow().log_prob(v))(xs), flow().log_prob(xs))


def test_repeated_transforms_do_not_reuse_a_transform_s_tensors():
    """A mask built inside one transform must not be cached for the next (functorch levels)."""
    m = _flow("auto")
    x = torch.randn(1, D)
    f = lambda v: m.transform(v)[1].sum()  # noqa: E731
    first, second = torch.func.hessian(f)(x), torch.func.hessian(f)(x)
    torch.testing.assert_close(first, second)
    out, tangent = torch.func.jvp(lambda v: m.transform(v)[0], (x,), (torch.ones_like(x),))
    assert out.shape == tangent.shape == (1, D)
    assert dispatch.last_auto_pick() == ("made", "reference", dispatch._UNDER_TRANSFORM)


def test_value_checks_run_under_grad_and_are_skipped_only_under_vmap():
    m = af.NADE(D, 7, backend="auto")
    half = torch.full((2, D), 0.5)
    with pytest.raises(ValueError, match="binary"):
        torch.func.grad(lambda v: m.log_prob(v).sum())(half)
    assert torch.func.vmap(lambda v: m.log_prob(v[None]))(half).shape == (2, 1)  # vmap cannot read values


def _kernel_backends():
    return ["reference"] + [b for b in ("cpp",) if dispatch._why_not(b, "made", torch.device("cpu")) is None]


BATCHED_MODELS = {**MODELS, "made_flow": lambda b: af.MADE(D, [9, 9], out="gaussian", backend=b, seed=0),
                  "made_mixture": lambda b: af.MADE(D, [9], out="gaussian", K=2, backend=b, seed=0)}


@pytest.mark.parametrize("backend", _kernel_backends())
@pytest.mark.parametrize("name", list(BATCHED_MODELS))
def test_per_example_gradients_by_is_grads_batched(name, backend):
    """``autograd.grad(log_prob, params, eye, is_grads_batched=True)`` (the backward under torch's
    own vmap, with no torch.func transform active) gives each row's gradient on every backend;
    a masked-layer kernel's backward says it ran the reference there."""
    torch.manual_seed(1)
    m = BATCHED_MODELS[name](backend)
    x = torch.randn(3, D) if name in ("rnade", "made_flow", "made_mixture") else _data(name)
    params = list(m.parameters())
    before = sum(dispatch.reference_backwards("transform").values())
    nonfinite_before = dispatch.reference_backwards()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = torch.autograd.grad(m.log_prob(x), params, torch.eye(3), is_grads_batched=True, allow_unused=True)
    if backend != "reference" and ("made" in name or name == "fvsbn"):
        assert sum(dispatch.reference_backwards("transform").values()) > before
        assert any("ran under vmap" in str(w.message) for w in caught)
    assert dispatch.reference_backwards() == nonfinite_before  # the NaN/inf count is apart
    for i in range(3):
        row = torch.autograd.grad(m.log_prob(x[i:i + 1]).sum(), params, allow_unused=True)
        for k, (b, r) in enumerate(zip(batched, row)):
            if r is None:
                assert b is None or not b[i].any()
                continue
            torch.testing.assert_close(b[i], r, atol=1e-5, rtol=1e-4, msg=lambda s: f"{name} param {k} row {i}: {s}")


def test_batched_gradients_through_the_fast_inverse_are_refused_with_the_fix():
    if "cpp" not in _kernel_backends():
        pytest.skip("the C++ extension is not built")
    m = _flow("cpp")
    x, _ = m.inverse(torch.randn(3, D))
    with pytest.raises(NotImplementedError, match="is_grads_batched.*backend='reference'"):
        torch.autograd.grad(x.sum(1), list(m.parameters()), torch.eye(3), is_grads_batched=True, allow_unused=True)


# ---- forward-mode AD (torch.autograd.forward_ad): the kernels have no forward derivatives ----------------

@pytest.mark.parametrize("name", list(MODELS))
def test_forward_mode_tangents_under_auto_are_the_references(name):
    """Inside a ``dual_level`` ``auto`` runs the reference (the kernels would drop the tangents):
    the directional derivative of log p along a parameter direction is the reference's."""
    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(2)
    auto = MODELS[name]("auto")
    x = _data(name)
    directions = {k: torch.randn_like(v) for k, v in auto.named_parameters()}
    with fwAD.dual_level():
        dual = {k: fwAD.make_dual(v.detach(), directions[k]) for k, v in auto.named_parameters()}
        tangent = fwAD.unpack_dual(_log_prob_with(auto, dual, x)).tangent
    assert auto.last_backend == "reference"
    assert dispatch.last_auto_pick()[2] == dispatch._UNDER_FORWARD_AD
    params = list(auto.parameters())
    want = []  # each row's directional derivative by reverse mode: <d log p_i / d params, directions>
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(auto.log_prob(x[i:i + 1]).sum(), params, allow_unused=True)
        want.append(sum((g * d).sum() for g, d in zip(grads, directions.values()) if g is not None))
    assert tangent is not None
    torch.testing.assert_close(tangent, torch.stack(want), atol=1e-5, rtol=1e-4)
    assert dispatch.last_auto_pick()[2] != dispatch._UNDER_FORWARD_AD  # outside the level auto is auto again


def test_forward_mode_through_a_flow_and_a_masked_layer_and_an_explicit_kernel_backend_refused():
    import torch.autograd.forward_ad as fwAD
    from armodel_fast.ops.masked_linear import masked_linear
    m = _flow("auto")
    x, v = torch.randn(3, D), torch.randn(3, D)
    with fwAD.dual_level():
        z, logdet = m.transform(fwAD.make_dual(x, v))
        z_tangent = fwAD.unpack_dual(z).tangent
    jac = torch.autograd.functional.jacobian(lambda t: m.transform(t)[0], x)  # [3, D, 3, D]
    torch.testing.assert_close(z_tangent, torch.einsum("bdce,ce->bd", jac, v))
    din, dout = torch.arange(D), torch.arange(4) % D
    w = torch.randn(4, D)
    cpp_here = dispatch._why_not("cpp", "masked_linear", torch.device("cpu")) is None
    with fwAD.dual_level():
        y = masked_linear(fwAD.make_dual(x, v), w, None, din, dout, False, backend="auto")
        torch.testing.assert_close(fwAD.unpack_dual(y).tangent, v @ (w * (dout[:, None] >= din[None])).t())
        if cpp_here:  # (without the extension cpp is refused for that reason instead)
            with pytest.raises(af.BackendUnavailableError, match="forward-mode AD.*backend='auto' or 'reference'"):
                masked_linear(x, w, None, din, dout, False, backend="cpp")
            with pytest.raises(af.BackendUnavailableError, match="forward-mode AD"):
                _flow("cpp").transform(x)
    if cpp_here:  # outside the level the kernels run again
        m = _flow("cpp")
        m.transform(x)
        assert m.last_backend == "cpp"


def test_forward_mode_through_a_compiled_model_and_the_public_head_ops():
    """A graph traced outside a dual level recompiles inside one (the level is a guard) and runs the
    reference; the fused heads' public ops take the reference math there too (their nodes have no jvp)."""
    import torch.autograd.forward_ad as fwAD
    from armodel_fast.ops.made import affine_density, bernoulli_log_prob
    from armodel_fast.reference import heads
    from armodel_fast.reference.made import affine_transform
    torch.manual_seed(3)
    din, dout = torch.arange(40) % 9, torch.arange(30) % 9
    layer = af.MaskedLinear(40, 30, din, dout, backend="auto")
    compiled = torch.compile(layer, backend="eager")
    x, v = torch.randn(20, 40), torch.randn(20, 40)
    with torch.no_grad():
        compiled(x)
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(compiled(fwAD.make_dual(x, v))).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, v @ (layer.weight * (dout[:, None] >= din[None])).t().detach())
    logits, t, xb = torch.randn(6, D), torch.randn(6, D), (torch.rand(6, D) < 0.5).float()
    raw, traw, xs = torch.randn(6, 2 * D), torch.randn(6, 2 * D), torch.randn(6, D)
    with fwAD.dual_level():
        got = fwAD.unpack_dual(bernoulli_log_prob(fwAD.make_dual(logits, t), xb)).tangent
        want = fwAD.unpack_dual(heads.bernoulli_log_prob(fwAD.make_dual(logits, t), xb).sum(-1)).tangent
        z, logdet = affine_density(xs, fwAD.make_dual(raw, traw), True)
        z_ref, logdet_ref = affine_transform(xs, fwAD.make_dual(raw, traw), True)
        pairs = [(fwAD.unpack_dual(a).tangent, fwAD.unpack_dual(b).tangent)
                 for a, b in ((z, z_ref), (logdet, logdet_ref))]
    torch.testing.assert_close(got, want)
    for a, b in pairs:
        torch.testing.assert_close(a, b)
