"""One validation path (issue 11, parts 2 and 3): the reference checks exactly what the
kernels check, and every bad argument gets the same clear error on every backend."""
import re

import pytest
import torch

import armodel_fast as af
from armodel_fast import dispatch
from armodel_fast.ops import made as made_ops
from armodel_fast.ops.nade import SPECS
from nade_cases import build, cases, x_for

BACKENDS = ["reference"] + [b for b in dispatch.BACKENDS[1:]
                            if dispatch._why_not(b, "made", torch.device("cpu")) is None]
BAD_ORDERS = [torch.tensor([0, 1, 1, 3]), torch.tensor([-1, 0, 1, 2]), torch.tensor([0, 1, 2, 4])]


def _runs(spec, backend):
    return backend == "reference" or dispatch._why_not(backend, spec.op, torch.device("cpu")) is None


def _nade_models(backend):
    """Every NADE-family model of SPECS that runs on ``backend`` (with a valid x), FVSBN and ARRNN."""
    nade = [(build(spec, 4, 3, backend=backend), x_for(spec, 2, 4, None, torch.float32))
            for spec in SPECS.values() if _runs(spec, backend)]
    return nade + [(af.FVSBN(4, backend=backend), torch.ones(2, 4))] + (
        [(af.ARRNN(4, 3), torch.ones(2, 4))] if backend == "reference" else [])  # ARRNN: reference only


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", BAD_ORDERS, ids=["duplicate", "negative", "out_of_range"])
def test_bad_order_buffer_from_state_dict_raises_everywhere(backend, bad):
    """An invalid ``order`` loaded through load_state_dict: a ValueError naming ``order``
    on every backend (the reference read uninitialised memory or sampled silently)."""
    for model, x in _nade_models(backend):
        state = model.state_dict()
        state["order"] = bad.clone()
        model.load_state_dict(state)
        with pytest.raises(ValueError, match="order"):
            model.sample(3)
        if not isinstance(model, af.FVSBN):  # FVSBN's forward does not read the order (degrees do)
            with pytest.raises(ValueError, match="order"):
                model.log_prob(x)


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("op", list(SPECS))
def test_bad_x_raises_what_the_reference_raises(backend, op):
    """Every invalid x of the model's x kind (nade_cases.X_KINDS): the same error type and
    message on every backend as on the reference (the op layer checks x once, from the spec)."""
    spec = SPECS[op]
    if not _runs(spec, backend):
        pytest.skip(f"{op} has no {backend} kernel")
    K = cases(spec).module_K
    ref, fast = build(spec, 4, 3, backend="reference"), build(spec, 4, 3, backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = x_for(spec, 2, 4, K, torch.float32, torch.Generator().manual_seed(0))
    for name, bad in cases(spec).bad(x, K, torch.float32).items():
        with pytest.raises((ValueError, TypeError)) as want:
            ref.log_prob(bad)
        with pytest.raises(want.type, match=re.escape(str(want.value))) as got:
            fast.log_prob(bad)
        assert str(got.value).startswith("x "), name


def _made_args(out="bernoulli", K=None, **kw):
    made = af.MADE(4, [6, 5], out=out, K=K, **kw)
    hidden, output, direct, ctx_w = made._layer_args()
    return made, hidden, output, direct, ctx_w


@pytest.mark.parametrize("backend", BACKENDS)
def test_made_sample_checks_order_and_degrees_everywhere(backend):
    made, hidden, output, direct, _ = _made_args(direct=True)
    u = torch.rand(3, 4, dtype=torch.float32)
    for bad in BAD_ORDERS:
        with pytest.raises(ValueError, match="order"):
            made_ops.made_sample(hidden, output, bad, u, backend=backend)
    other = made.order.flip(0)  # a permutation, but not the one the layers' degrees encode
    with pytest.raises(ValueError, match="in_degrees must be MADE's input degrees"):
        made_ops.made_sample(hidden, output, other, u, direct_layer=direct, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_made_sample_head_must_fit_the_layers(backend):
    made, hidden, output, _, _ = _made_args()
    with pytest.raises(ValueError, match="head='categorical'"):
        made_ops.made_sample(hidden, output, made.order, torch.rand(3, 4, dtype=torch.float32), "categorical", K=3,
                             backend=backend)
    with pytest.raises(ValueError, match="head='gaussian'"):
        made_ops.made_sample(hidden, output, made.order, torch.rand(3, 4, 2, dtype=torch.float32), "gaussian", K=1,
                             backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_made_sample_context_needs_context_weights(backend):
    made, hidden, output, _, ctx_w = _made_args(context_dim=2)
    ctx = torch.randn(3, 2, dtype=torch.float32)
    u = torch.rand(3, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="context_weights"):
        made_ops.made_sample(hidden, output, made.order, u, context=ctx, context_weights=None, backend=backend)
    with pytest.raises(ValueError, match="context_weights Wc_out"):
        made_ops.made_sample(hidden, output, made.order, u, context=ctx, context_weights=(ctx_w[0], ctx_w[0]),
                             backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_masked_linear_input_dtype_is_checked_everywhere(backend, dtype):
    layer = af.MaskedLinear(4, 3, torch.arange(4), torch.arange(3), backend=backend)  # float32
    with pytest.raises(TypeError, match="same dtype"):
        layer(torch.zeros(2, 4, dtype=dtype))


def test_boolean_flags_must_be_bools():
    with pytest.raises(TypeError, match="direct must be a bool"):
        af.MADE(4, [5], direct="no")
    with pytest.raises(TypeError, match="bias must be a bool"):
        af.MaskedLinear(4, 3, torch.arange(4), torch.arange(3), bias="no")
    with pytest.raises(TypeError, match="strict must be a bool"):
        af.MaskedLinear(4, 3, torch.arange(4), torch.arange(3), strict=1)


@pytest.mark.parametrize("seed", ["abc", None, 1.5, True])
def test_made_seed_must_be_an_int(seed):
    """``seed`` is an int; None is refused (masks must be reproducible from the arguments)."""
    with pytest.raises(TypeError, match="seed must be an int"):
        af.MADE(4, [5], seed=seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_context_is_refused_everywhere(backend, value):
    """A NaN/inf context: "context must be finite" from every method on every backend (the
    one-pass samplers would otherwise draw other samples than the reference's NaN logits give)."""
    for out in ("bernoulli", "gaussian"):
        m = af.MADE(3, [4], out=out, context_dim=2, backend=backend)
        c = torch.tensor([[0.5, value]])
        x = torch.zeros(1, 3)
        calls = [lambda: m.log_prob(x, context=c), lambda: m(x, context=c),
                 lambda: m.sample(1, u=torch.full((1, 3) + ((2,) if out == "gaussian" else ()), 0.3), context=c)]
        if out == "gaussian":
            calls += [lambda: m.transform(x, c), lambda: m.inverse(x, c)]
        for call in calls:
            with pytest.raises(ValueError, match="context must be finite"):
                call()
