"""Residual MADE (af.MADE(residual=...), reference.made.layer_program): the layer program, the
reference against a hand-written twin of zuko's / nflows' blocks, the autoregressive property on
every backend, and the program's checks. Fast backends against the reference: made_cases.CONFIGS
and test_made_inverse.FLOW_VARIANTS hold residual models."""
import pytest
import torch
import torch.nn.functional as F

import armodel_fast as af
from armodel_fast import ops
from armodel_fast.reference import made as ref
from armodel_fast.reference.made import ACT_IN, ACT_OUT, SKIP
from made_cases import FAST

ALL = ["reference"] + FAST


def test_layer_program():
    assert ref.layer_program([5, 7]) == ([5, 7], [ACT_OUT, ACT_OUT], [True, True])
    widths, flags, new = ref.layer_program([8, 8], "preact")
    assert widths == [8] * 5 and flags == [0, ACT_IN | ACT_OUT, SKIP, ACT_IN | ACT_OUT, SKIP]
    assert new == [True, False, False, False, False]
    widths, flags, new = ref.layer_program([6, 9, 9], "linear")  # a projection where the width changes
    assert widths == [6, 6, 6, 9, 9, 9, 9, 9] and flags == [0, ACT_OUT, SKIP, 0, ACT_OUT, SKIP, ACT_OUT, SKIP]
    assert new == [True, False, False, True, False, False, False, False]
    with pytest.raises(ValueError, match="residual"):
        ref.layer_program([4], "post")


def _masked(layer):
    return layer.weight * layer.mask()


@pytest.mark.parametrize("residual", ["linear", "preact"])
def test_reference_is_the_blocks_of_zuko_and_nflows(residual):
    """raw = out(h), h = W0 x + b0 + Wc c, then per block h <- h + W2 act(W1 g(h) + b1) + b2 with g the
    identity (zuko's MaskedMLP(residual=True)) or the activation (nflows' MaskedResidualBlock), and a
    projection h <- W h + b where the width changes; plus the direct and context terms."""
    torch.manual_seed(0)
    m = af.MADE(6, [7, 9], out="gaussian", K=2, residual=residual, direct=True, context_dim=3, activation="tanh",
                order="random", dtype=torch.float64)
    x, c = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    lin = lambda layer, h: F.linear(h, _masked(layer), layer.bias)  # noqa: E731
    g = torch.tanh if residual == "preact" else (lambda t: t)
    L = list(m.layers)
    h = lin(L[0], x) + m.context_hidden(c)
    h = h + lin(L[2], torch.tanh(lin(L[1], g(h))))   # block on 7 units
    h = lin(L[3], h)                                 # projection 7 -> 9
    h = h + lin(L[5], torch.tanh(lin(L[4], g(h))))   # block on 9 units
    assert len(L) == 6
    raw = lin(m.output, h) + F.linear(x, _masked(m.direct)) + m.context_out(c)
    torch.testing.assert_close(torch.cat([t.flatten(-2) for t in m(x, c)], -1),
                               torch.cat([t.flatten(-2) for t in ref.made_params_split(raw, "gaussian", 6, 2)], -1))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("residual", ["linear", "preact"])
def test_outputs_are_autoregressive(backend, residual):
    """d output(dimension order[t]) / d x_j is zero for every j at step >= t, on every backend."""
    m = af.MADE(5, [6, 8], out="gaussian", residual=residual, order=[3, 0, 4, 1, 2], backend=backend, seed=2,
                dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    x = torch.randn(5, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: m(v[None])[1][0, :, 0], x)  # mu [D] w.r.t. x [D]
    position = torch.empty(5, dtype=torch.long)
    position[m.order] = torch.arange(5)
    later_or_same = position[None, :] >= position[:, None]
    assert bool((J[later_or_same] == 0).all())
    assert bool((J[~later_or_same] != 0).any())


@pytest.mark.parametrize("backend", ALL)
def test_residual_sample_and_inverse_round_trip(backend):
    m = af.MADE(6, 10, out="gaussian", residual="preact", context_dim=2, backend=backend, dtype=torch.float64)
    z, c = torch.randn(4, 6, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    x, ld = m.inverse(z, c)
    z2, ld2 = m.transform(x, c)
    torch.testing.assert_close(z2, z)
    torch.testing.assert_close(ld2, -ld)
    assert m.sample(3, context=c).shape == (3, 6)


def test_made_residual_argument():
    assert af.MADE(4, [5], residual=True).residual == "preact"
    assert af.MADE(4, [5], residual=False).residual is None
    m = af.MADE(4, [5, 5], residual="linear")
    assert len(m.layers) == 5 and "residual='linear'" in repr(m)
    assert [getattr(m, f"degrees_{l}").shape for l in range(5)] == [(1, 5)] * 5
    for bad in ("post", 1, [1]):
        with pytest.raises(ValueError, match="residual"):
            af.MADE(4, [5], residual=bad)


def test_residual_state_dict_round_trip_and_masks():
    """The block layers share their input's degrees in every mask set; next_mask switches them together."""
    a = af.MADE(5, [6, 6], residual="preact", num_masks=3, order="random", seed=4)
    b = af.MADE(5, [6, 6], residual="preact", num_masks=3, order="random", seed=9)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 2, (3, 5)).float()
    for _ in range(3):
        torch.testing.assert_close(b.log_prob(x), a.log_prob(x))
        degrees = a.degrees()
        assert all(torch.equal(degrees[1], d) for d in degrees[2:])
        a.next_mask(), b.next_mask()


def _layers(D=4, H=5, n=3):
    g = torch.Generator().manual_seed(0)
    m0 = ref.input_degrees(torch.arange(D))
    m1 = ref.hidden_degrees(m0, [H], g)[0]
    lay = lambda a, b, din, dout: (torch.randn(b, a, generator=g), torch.randn(b, generator=g), din, dout)  # noqa
    hidden = [lay(D, H, m0, m1), lay(H, H, m1, m1), lay(H, H, m1, m1)]
    return hidden, lay(H, D, m1, m0), torch.rand(n, D, generator=g)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("program, match", [
    ([ACT_OUT, ACT_OUT], "one flag set per hidden layer"),
    ([ACT_OUT | ACT_IN, ACT_OUT, SKIP], "program\\[0\\]"),
    ([0, SKIP, ACT_OUT], "program\\[1\\]"),
    ([0, 1, 9], "program\\[2\\]"),
    ("abc", "program"),
    ({0, 1, 4}, "list or tuple"),  # unordered: refused, not read in some order
])
def test_bad_programs_are_refused_on_every_backend(backend, program, match):
    hidden, output, u = _layers()
    with pytest.raises(ValueError, match=match):
        ops.made.made_forward(u, hidden, output, program=program, backend=backend)
    with pytest.raises(ValueError, match=match):
        ops.made.made_sample(hidden, output, torch.arange(4), u, program=program, backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_skip_needs_equal_degrees(backend):
    hidden, output, u = _layers()
    w, b, din, dout = hidden[2]
    hidden[2] = (w, b, din, dout.flip(0))
    with pytest.raises(ValueError, match="SKIP"):
        ops.made.made_forward(u, hidden, output, program=[0, ACT_OUT, SKIP], backend=backend)


@pytest.mark.skipif("cpp" not in FAST, reason="the C++ extension is not built")
def test_native_sampler_checks_its_program():
    from armodel_fast import _ext
    from armodel_fast.ops.masked_linear import prepare
    hidden, output, u = _layers()
    layers = hidden + [output]
    prepped = [prepare(w, din, dout, i == 3) for i, (w, _, din, dout) in enumerate(layers)]
    weights = [p.w_sorted for p in prepped]
    biases = [b.index_select(0, p.perm_out).contiguous() for (_, b, _, _), p in zip(layers, prepped)]
    degrees = [d.index_select(0, p.perm_out).contiguous() for (*_, d), p in zip(hidden, prepped)]
    args = (weights, biases, degrees, None, torch.arange(4), None, None, u, 0, 1, 1)
    x, _ = _ext.get_ext().made_sample(*args, [0, 1, 4])
    assert x.shape == (3, 4)
    for bad in ([0, 1], [0, 4, 1], [2, 1, 4], [0, 1, 8]):
        with pytest.raises(ValueError, match="program"):
            _ext.get_ext().made_sample(*args, bad)


def test_deep_residual_models_run_on_every_backend_or_are_refused_at_construction():
    """The fast samplers hold up to MAX_HIDDEN_LAYERS hidden layers; a MADE with more is refused when
    built (every backend alike), one at the limit samples on every backend."""
    with pytest.raises(ValueError, match="at most 63 hidden layers"):
        af.MADE(4, [3] * 32, residual="linear")  # 1 + 2 * 32 layers
    hidden = [3] * 31  # 1 + 2 * 31 = 63
    u = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samples, state = [], None
    for backend in ALL:
        m = af.MADE(4, hidden, residual="linear", out="gaussian", dtype=torch.float64, backend=backend)
        assert len(m.layers) == 63
        if state is None:
            state = m.state_dict()
        m.load_state_dict(state)
        samples.append(m.sample(2, u=u))
    for x in samples[1:]:
        torch.testing.assert_close(x, samples[0])


def test_custom_op_program_text_is_checked():
    from armodel_fast.ops.made.affine_op import decode_program, encode_program
    assert decode_program(encode_program([0, 3, 4])) == [0, 3, 4] and decode_program(encode_program(None)) is None
    with pytest.raises(ValueError, match="program"):
        decode_program("0,,4")
