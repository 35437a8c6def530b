"""NaN and +-inf parameters give the reference's non-finite pattern on every backend (issue 11.4).

One entry of one parameter is set to NaN, +inf or -inf; the reference module and each fast
backend that runs here (cpp; Triton under the interpreter) must then agree on which log-probs,
outputs and sampled log-probs are NaN, +inf and -inf (the finite ones to the usual tolerance).
The CUDA NADE row math is checked through its CPU row-reference (``_C.nade_rowref_*``).

The data holds zeros on purpose: the reference's input update ``a += x_d W[:, d]`` turns a
non-finite entry of ``W[:, d]`` into NaN even when x_d = 0, which a kernel skipping x_d = 0
would miss. In the masked layers (FVSBN, MADE) the bad entry sits on connections the mask keeps
and on ones it drops: the reference's dense ``x @ (weight * mask).T`` turns a non-finite
masked-out weight, or a non-finite hidden unit times a masked-out 0, into NaN, which the fast
masked layer reproduces (its kernels skip masked-out connections; the op marks those outputs).
MADE/FVSBN sampling refuses non-finite parameters with the same ValueError on every backend.

Gradients (``test_nonfinite_parameter_gradients``): ``log_prob(x).sum().backward()`` gives
every parameter and x (all but the categorical model's) the reference autograd's gradient,
non-finite pattern included; the fast backends compute them through the reference there and
say so (a RuntimeWarning, ``dispatch.reference_backwards()``), in eager and compiled backwards.
"""
import pytest
import torch

import armodel_fast as af
from armodel_fast import _ext, dispatch
from armodel_fast.nn.masked_linear import MaskedLinear
from model_zoo import randomize

D, H, B, N = 6, 5, 8, 6
ORDER = torch.tensor([2, 0, 5, 1, 4, 3])
MODELS = {
    "nade": lambda: af.NADE(D, H, order=ORDER),
    "categorical_nade": lambda: af.CategoricalNADE(D, H, 3, order=ORDER),
    "rnade": lambda: af.RNADE(D, H, 2, order=ORDER),
    "fvsbn": lambda: af.FVSBN(D, order=ORDER),
    "made": lambda: af.MADE(D, [7], order=ORDER, seed=0),
    "made_direct": lambda: af.MADE(D, [7, 4], order=ORDER, seed=0, direct=True, activation="tanh"),
}
PARAMS = [(m, p) for m, build in MODELS.items() for p, _ in build().named_parameters()]
VALUES = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
# The fast backends that run on the CPU tensors these tests build (on a GPU machine Triton
# needs CUDA tensors: only cpp here; the gpu-marked tests cover the GPU kernels).
FAST = [b for b in ("cpp", "triton")
        if af.backends()[b].available and dispatch._device_why_not(b, torch.device("cpu")) is None]


def _data(model: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if model == "categorical_nade":
        return torch.randint(0, 3, (B, D), generator=g)
    if model == "rnade":
        x = torch.randn(B, D, generator=g)
        x[::2, 1::2] = 0.0  # exact zeros: x_d W[:, d] must still see a non-finite W[:, d]
        return x
    return (torch.rand(B, D, generator=g) < 0.5).float()


def _entries(module: torch.nn.Module, pname: str):
    """Three flat indices of parameter ``pname``; in a masked layer's weight, two connected
    entries and two masked-out ones."""
    owner, _, leaf = pname.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    p = getattr(sub, leaf)
    g = torch.Generator().manual_seed(len(pname))
    if isinstance(sub, MaskedLinear) and leaf == "weight":
        kept = sub.mask().reshape(-1).bool()
        picks = []
        for group in (kept, ~kept):
            idx = group.nonzero().flatten()
            picks += idx[torch.randperm(idx.numel(), generator=g)[:2]].tolist()
        return picks
    return torch.randperm(p.numel(), generator=g)[:3].tolist()


def _poisoned(model: str, pname: str, flat_index: int, value: float) -> dict:
    torch.manual_seed(flat_index)
    ref = randomize(MODELS[model](), 0.5)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state[pname].view(-1)[flat_index] = value
    return state


def _same_pattern(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = got.detach().double(), want.detach().double()
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        assert torch.equal(test(got), test(want)), f"{what}: {name} at {test(got).nonzero().tolist()}, " \
                                                   f"reference {test(want).nonzero().tolist()}"
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4 * D, msg=lambda m: f"{what}: {m}")


def _run(model: str, state: dict, backend: str):
    m = MODELS[model]()
    m.load_state_dict(state)
    m.set_backend(backend)
    x = _data(model)
    u = torch.rand(m.uniforms_shape(N), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = {"log_prob": m.log_prob(x), "outputs": m(x)}  # outputs: the per-dimension head parameters
        try:
            xs, lps = m.sample(N, u=u, return_log_prob=True)
        except ValueError as e:  # MADE/FVSBN sampling refuses non-finite parameters
            assert model in ("made", "made_direct", "fvsbn") and "NaN or inf" in str(e), e
            return {**out, "sample": type(e).__name__}
    out["sample log_prob"] = lps
    out["samples"] = xs.double()
    return out


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("value", list(VALUES), ids=list(VALUES))
@pytest.mark.parametrize("model,pname", PARAMS, ids=[f"{m}-{p}" for m, p in PARAMS])
def test_nonfinite_parameter_matches_reference(model, pname, value, backend):
    for flat_index in _entries(MODELS[model](), pname):
        state = _poisoned(model, pname, flat_index, VALUES[value])
        want = _run(model, state, "reference")
        got = _run(model, state, backend)
        assert got.keys() == want.keys(), f"{backend} {model}.{pname}[{flat_index}]: {got.keys()} vs {want.keys()}"
        for key in want:
            what = f"{backend} {model}.{pname}[{flat_index}] = {value}: {key}"
            if isinstance(want[key], str):
                assert got[key] == want[key], what
            else:
                _same_pattern(got[key], want[key], what)


NADE_KINDS = {"nade": 0, "categorical_nade": 1, "rnade": 2}
HAS_ROWREF = _ext.get_ext() is not None and hasattr(_ext.get_ext(), "nade_rowref_forward")


@pytest.mark.skipif(not HAS_ROWREF, reason=f"armodel_fast._C not loaded: {_ext.ext_error()}")
@pytest.mark.parametrize("value", list(VALUES), ids=list(VALUES))
@pytest.mark.parametrize("model,pname", [mp for mp in PARAMS if mp[0] in NADE_KINDS],
                         ids=[f"{m}-{p}" for m, p in PARAMS if m in NADE_KINDS])
def test_nonfinite_parameter_cuda_row_math(model, pname, value):
    """The CUDA kernels' row math (nade_row.h, run on the CPU) gives the reference's pattern."""
    C = _ext.get_ext()
    for flat_index in _entries(MODELS[model](), pname):
        state = _poisoned(model, pname, flat_index, VALUES[value])
        ref = MODELS[model]()
        ref.load_state_dict(state)
        x = _data(model)
        with torch.no_grad():
            lp_want, out_want = ref.log_prob(x), ref(x)
        lp, out = C.nade_rowref_forward(NADE_KINDS[model], x, *ref.params())
        what = f"row math {model}.{pname}[{flat_index}] = {value}"
        _same_pattern(lp, lp_want, f"{what}: log_prob")
        _same_pattern(out, out_want, f"{what}: outputs")


def _grads(model: str, state: dict, backend: str) -> dict:
    """d/d(every parameter) of ``log_prob(x).sum()`` and d/dx (x not categorical)."""
    m = MODELS[model]()
    m.load_state_dict(state)
    m.set_backend(backend)
    x = _data(model)
    if x.is_floating_point():
        x.requires_grad_(True)
    if backend == "reference":
        m.log_prob(x).sum().backward()
    else:  # the fast backward meets a NaN/inf and runs the reference's, and says so
        before = sum(dispatch.reference_backwards().values())
        with pytest.warns(RuntimeWarning, match="computed by the reference"):
            m.log_prob(x).sum().backward()
        assert sum(dispatch.reference_backwards().values()) > before
    out = {f"d{name}": p.grad for name, p in m.named_parameters()}
    if x.is_floating_point():
        out["dx"] = x.grad
    return out


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("value", list(VALUES), ids=list(VALUES))
@pytest.mark.parametrize("model,pname", PARAMS, ids=[f"{m}-{p}" for m, p in PARAMS])
def test_nonfinite_parameter_gradients(model, pname, value, backend):
    """The gradients' NaN/+inf/-inf pattern and finite values are the reference autograd's."""
    failures = []
    for flat_index in _entries(MODELS[model](), pname):
        state = _poisoned(model, pname, flat_index, VALUES[value])
        want, got = _grads(model, state, "reference"), _grads(model, state, backend)
        for key in want:
            what = f"{backend} {model}.{pname}[{flat_index}] = {value}: {key}"
            try:
                assert (got[key] is None) == (want[key] is None), f"{what}: None vs {want[key] is None}"
                if want[key] is not None:
                    _same_pattern(got[key], want[key], what)
            except AssertionError as e:
                failures.append(str(e).splitlines()[0])
                break  # one message per poisoned entry
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(not FAST, reason="no fast backend here")
@pytest.mark.parametrize("model", ["nade", "rnade", "made"])
def test_nonfinite_parameter_gradients_compiled(model):
    """The NaN/inf check and the reference's gradients run inside the backward ops, so a graph
    compiled by torch.compile gets them too."""
    pname = {"nade": "V", "rnade": "W", "made": "output.weight"}[model]
    state = _poisoned(model, pname, 0, float("nan"))
    want = _grads(model, state, "reference")
    m = MODELS[model]()
    m.load_state_dict(state)
    m.set_backend(FAST[0])
    x = _data(model).requires_grad_(True)
    torch._dynamo.reset()
    with pytest.warns(RuntimeWarning, match="computed by the reference"):
        torch.compile(m.log_prob, fullgraph=True, backend="aot_eager")(x).sum().backward()
    got = {**{f"d{name}": p.grad for name, p in m.named_parameters()}, "dx": x.grad}
    for key in want:
        _same_pattern(got[key], want[key], f"compiled {FAST[0]} {model}.{pname}[0] = nan: {key}")
