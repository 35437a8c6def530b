"""Bad input raises a clear ValueError/TypeError naming the argument, before any kernel runs."""
import pytest
import torch

import armodel_fast as af


def _binary_models():
    return [af.FVSBN(4), af.NADE(4, 3), af.MADE(4, [5]), af.ARRNN(4, 3)]


@pytest.mark.parametrize("model", _binary_models(), ids=lambda m: type(m).__name__)
def test_binary_models_reject_bad_x(model):
    with pytest.raises(TypeError, match="x"):
        model.log_prob([[0, 1, 0, 1]])
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4\]"):
        model.log_prob(torch.zeros(2, 5))
    if isinstance(model, af.MADE):  # MADE takes an unbatched x [D] (the flow libraries pass one)
        assert model.log_prob(torch.zeros(4)).shape == ()
    else:
        with pytest.raises(ValueError, match="x must have shape"):
            model.log_prob(torch.zeros(4))
    with pytest.raises(ValueError, match="x must be binary"):
        model.log_prob(torch.full((2, 4), 0.5))
    with pytest.raises(TypeError, match="x must be real"):
        model.log_prob(torch.zeros(2, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="u must have shape"):
        model.sample(3, u=torch.rand(3, 5))
    with pytest.raises(ValueError, match="u must hold uniforms"):
        model.sample(3, u=torch.rand(3, 4) + 1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        model.sample(0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="x is on cuda"):
            model.log_prob(torch.zeros(2, 4, device="cuda"))


def test_device_mismatch_names_x():
    model = af.NADE(4, 3).to("meta")
    with pytest.raises(ValueError, match="x is on cpu"):
        model.log_prob(torch.zeros(2, 4))


@pytest.mark.parametrize("order,exc", [([0, 1, 1, 2], ValueError), ([0, 1, 2], ValueError),
                                       ([0, 1, 2, 4], ValueError), (torch.tensor([0.0, 1, 2, 3]), TypeError),
                                       ("abc", TypeError)])
def test_order_must_be_a_permutation(order, exc):
    for build in (lambda: af.NADE(4, 3, order=order), lambda: af.FVSBN(4, order=order),
                  lambda: af.CategoricalNADE(4, 3, 2, order=order), lambda: af.ARRNN(4, 3, order=order)):
        with pytest.raises(exc, match="order"):
            build()


def test_made_argument_checks():
    with pytest.raises(ValueError, match="order"):
        af.MADE(4, [5], order="sideways")
    with pytest.raises(ValueError, match="order"):
        af.MADE(4, [5], order=[0, 0, 1, 2])
    with pytest.raises(TypeError, match="hidden"):
        af.MADE(4, 5.0)
    with pytest.raises(ValueError, match="hidden"):
        af.MADE(4, [])
    with pytest.raises(ValueError, match="out"):
        af.MADE(4, [5], out="poisson")
    with pytest.raises(ValueError, match="K"):
        af.MADE(4, [5], out="categorical")
    with pytest.raises(ValueError, match="K"):
        af.MADE(4, [5], K=3)
    with pytest.raises(ValueError, match="num_masks"):
        af.MADE(4, [5], num_masks=0)
    with pytest.raises(ValueError, match=r"activation nn.ELU\(alpha=5.0\)"):  # the kernels fuse alpha=1 only
        af.MADE(4, [5], activation=torch.nn.ELU(alpha=5.0))
    assert af.MADE(4, [5], activation=torch.nn.ELU(alpha=1.0)).activation == "elu"
    for out, K in (("bernoulli", None), ("gaussian", 2), ("categorical", 3)):  # no scale to bound there
        with pytest.raises(ValueError, match="scale"):
            af.MADE(4, [5], out=out, K=K, scale="raw")
    m = af.MADE(4, [5], num_masks=2)
    with pytest.raises(ValueError, match="ensemble"):
        m.log_prob(torch.zeros(1, 4), ensemble=3)


def test_context_checks():
    m = af.MADE(4, [5], context_dim=2)
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="context is required"):
        m.log_prob(x)
    with pytest.raises(ValueError, match=r"context must have shape \[3, 2\]"):
        m.log_prob(x, context=torch.zeros(3, 5))
    with pytest.raises(TypeError, match="context"):
        m.log_prob(x, context=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="context was given"):
        af.MADE(4, [5]).log_prob(x, context=torch.zeros(3, 2))
    assert m.log_prob(x, context=torch.zeros(3, 2)).shape == (3,)
    assert m.sample(2, context=torch.zeros(2, 2)).shape == (2, 4)


def test_categorical_checks():
    m = af.CategoricalNADE(3, 4, K=3)
    with pytest.raises(TypeError, match="x must hold integer"):
        m.log_prob(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"x values must lie in \[0, K=3\)"):
        m.log_prob(torch.full((2, 3), 3))
    with pytest.raises(ValueError, match="K"):
        af.CategoricalNADE(3, 4, K=1)
    with pytest.raises(ValueError, match=r"x values must lie in \[0, K=3\)"):
        af.MADE(3, [4], out="categorical", K=3).log_prob(torch.full((1, 3), -1))


def test_real_checks():
    m = af.RNADE(3, 4, 2)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        m.log_prob(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="x must be finite"):
        m.log_prob(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match=r"u must have shape \[B, 3, 2\]"):
        m.sample(2, u=torch.rand(2, 3))
    flow = af.MADE(3, [4], out="gaussian", K=2)
    with pytest.raises(ValueError, match="K=1"):
        flow.inverse(torch.zeros(1, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_finite_check_sees_every_non_finite_value_and_no_overflowing_sum(bad):
    m = af.MADE(3, [4], out="gaussian")
    big = torch.tensor([[3e38, 3e38, 3e38]])  # finite values whose float32 sum overflows
    assert bool(torch.isinf(big.sum()))
    assert m.log_prob(big).shape == (1,)  # accepted: every entry is finite
    for x in (torch.tensor([[0.0, bad, 1.0]]), torch.tensor([[3e38, 3e38, bad]]),
              torch.tensor([[float("inf"), -float("inf"), 0.0]])):
        with pytest.raises(ValueError, match="x must be finite"):
            m.log_prob(x)


@pytest.mark.parametrize("kwargs,exc,word", [({"D": 0, "H": 3}, ValueError, "D"), ({"D": 3, "H": 0}, ValueError, "H"),
                                             ({"D": 3.0, "H": 3}, TypeError, "D")])
def test_sizes(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        af.NADE(**kwargs)


def test_masked_linear_checks():
    with pytest.raises(ValueError, match="in_degrees"):
        af.MaskedLinear(3, 2, [1, 2], [1, 2])
    with pytest.raises(TypeError, match="out_degrees"):
        af.MaskedLinear(3, 2, [1, 2, 3], [1.0, 2.0])
    layer = af.MaskedLinear(3, 2, [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 3\]"):
        layer(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        layer(torch.zeros(2, 3, dtype=torch.long))


_BINARY_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
                  torch.int16, torch.int32, torch.int64, torch.bool]


@pytest.mark.parametrize("dtype", _BINARY_DTYPES, ids=str)
def test_binary_check_is_exact(dtype):
    """The one-pass bit test (the extension's ``any_nonbinary``) agrees with ``(x == 0) | (x == 1)``
    for every dtype, contiguous or not, small or split over threads; -0.0 counts as 0."""
    from armodel_fast import _ext
    from armodel_fast._validate import is_binary

    torch_form = lambda t: bool(((t == 0) | (t == 1)).all())  # noqa: E731
    g = torch.Generator().manual_seed(0)
    floating = dtype.is_floating_point
    bad_values = [0.5, 2.0, -1.0, float("nan"), float("inf"), 1e-30] if floating else [2, 3]
    if dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        bad_values.append(-1)
    for shape in [(3, 5), (300, 301)]:  # 90,300 values: more than one thread's share
        base = torch.randint(0, 2, shape, generator=g).to(dtype)
        if floating:
            base[0, 1] = -0.0
        for t in (base, base.t()):
            assert is_binary(t) and torch_form(t)
        if dtype == torch.bool:
            continue
        for value in bad_values:
            for pos in [(0, 0), (shape[0] // 2, shape[1] // 3), (shape[0] - 1, shape[1] - 1)]:
                t = base.clone()
                t[pos] = value
                want = torch_form(t)
                assert is_binary(t) == want and is_binary(t.t()) == want, (value, pos)
    if _ext.get_ext() is not None:
        assert hasattr(_ext.get_ext(), "any_nonbinary")  # the fast test is what runs on the CPU


@pytest.mark.parametrize("value", [0.5, float("nan"), 2.0, -1.0])
def test_binary_models_reject_one_bad_value_anywhere(value):
    x = torch.randint(0, 2, (64, 50)).float()
    x[37, 41] = value
    for model in [af.NADE(50, 8), af.MADE(50, [16]), af.FVSBN(50)]:
        with pytest.raises(ValueError, match="x must be binary"):
            model.log_prob(x)


def test_integer_arguments_take_numpy_and_torch_integers():
    """Sizes and seeds read from numpy configs (np.int64) or 0-d integer tensors are ints;
    bools, floats and 1-D tensors are still refused."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    a = af.MADE(5, 7, seed=3)
    torch.manual_seed(0)
    b = af.MADE(np.int64(5), [np.int32(7)], seed=torch.tensor(3))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert type(af.NADE(np.int64(4), np.int64(3)).D) is int
    for bad in (True, 4.0, np.bool_(True), torch.tensor([4])):
        with pytest.raises(TypeError, match="D must be an int"):
            af.NADE(bad, 3)
    with pytest.raises(TypeError, match="hidden"):
        af.MADE(4, [np.float32(5)])
