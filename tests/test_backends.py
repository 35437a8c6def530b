"""backends() reports every backend and why not; explicit unavailable backends raise."""
import pytest
import torch

import armodel_fast as af
from armodel_fast import dispatch


def test_backends_report():
    status = af.backends()
    assert set(status) == {"reference", "cpp", "triton", "cuda"}
    assert status["reference"].available
    for s in status.values():
        assert isinstance(s.reason, str) and s.reason
    if not torch.cuda.is_available():
        assert not status["cuda"].available


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend"):
        af.NADE(4, 3, backend="fortran")
    with pytest.raises(TypeError, match="backend"):
        af.NADE(4, 3, backend=None)


def test_explicit_backend_without_kernel_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "_TABLE", {})
    for name in ("cpp", "triton", "cuda"):
        with pytest.raises(af.BackendUnavailableError, match=name):
            af.NADE(4, 3, backend=name)
        with pytest.raises(af.BackendUnavailableError):
            af.ARRNN(4, 3, backend=name)


def test_auto_says_which_backend_ran(monkeypatch):
    monkeypatch.setattr(dispatch, "_TABLE", {})
    model = af.NADE(4, 3, backend="auto")
    assert model.last_backend is None
    model.log_prob(torch.zeros(2, 4))
    assert model.last_backend == "reference"
    assert "cpp: no" in af.explain("nade")


def test_reference_backend_never_unavailable():
    assert dispatch.resolve_backend("reference", "anything", torch.device("cpu")) == "reference"


@pytest.mark.skipif(dispatch._why_not("cpp", "nade", torch.device("cpu")) is not None, reason="no cpp backend here")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_skips_backends_without_kernels_for_the_dtype(dtype, monkeypatch):
    """cpp has float32/float64 NADE kernels and samplers: ``auto`` runs the reference for
    half precision on the CPU and says why; an explicit cpp names the argument."""
    for model in (af.NADE(4, 3, backend="auto", dtype=dtype), af.CategoricalNADE(4, 3, 3, backend="auto", dtype=dtype),
                  af.RNADE(4, 3, 2, backend="auto", dtype=dtype)):
        x = model.sample(2)
        assert model.last_backend == "reference"
        assert model.log_prob(x).dtype == dtype and model.last_backend == "reference"
    monkeypatch.setattr(dispatch, "AUTO_MIN_WORK", {"train": 0, "eval": 0, "train_unsorted": 0, "train_unsorted_tiles": 0})  # no size rule for this tiny MADE
    made = af.MADE(4, [8], backend="auto", dtype=dtype)
    made.log_prob(torch.ones(2, 4, dtype=dtype))  # the masked layers take half precision
    assert made.last_backend == "cpp"
    assert made.sample(2).dtype == dtype and made.last_backend == "reference"
    assert f"cpp: no - backend 'cpp' has no {str(dtype)[6:]} kernel for nade" in af.explain("nade", "cpu", dtype)
    assert "cpp: yes" in af.explain("nade", "cpu", torch.float32)
    with pytest.raises(TypeError, match="W must be float32 or float64"):
        af.NADE(4, 3, backend="cpp", dtype=dtype).log_prob(torch.zeros(2, 4, dtype=dtype))
    with pytest.raises(TypeError, match="cpp MADE sampler takes float32/float64"):
        af.MADE(4, [8], backend="cpp", dtype=dtype).sample(2)


def test_constructor_names_why_a_backend_is_unavailable():
    """The platform's reason (extension not built, no GPU, ...), not "no kernel yet"."""
    for name, status in af.backends().items():
        if not status.available:
            with pytest.raises(af.BackendUnavailableError, match="unavailable here") as err:
                af.NADE(4, 3, backend=name)
            assert status.reason in str(err.value)


@pytest.mark.skipif(dispatch._why_not("cpp", "made", torch.device("cpu")) is not None, reason="no cpp backend here")
def test_second_order_gradients_raise_a_clear_error():
    models = [(af.NADE(5, 4, backend="cpp"), torch.bernoulli(torch.full((3, 5), 0.5))),
              (af.RNADE(5, 4, 2, backend="cpp"), torch.randn(3, 5)),
              (af.MADE(5, [8], backend="cpp"), torch.bernoulli(torch.full((3, 5), 0.5)))]
    for model, x in models:
        x.requires_grad_()
        g, = torch.autograd.grad(model.log_prob(x).sum(), x, create_graph=True)
        with pytest.raises(NotImplementedError, match="second-order gradients .* backend='reference'"):
            g.pow(2).sum().backward()
    flow = af.MADE(3, [8], out="gaussian", backend="cpp")
    z = torch.randn(2, 3, requires_grad=True)
    x, _ = flow.inverse(z)
    with pytest.raises(NotImplementedError, match="second-order gradients .*MADE.inverse"):
        torch.autograd.grad(x.sum(), z, create_graph=True)


@pytest.mark.parametrize("op, first", [("nade", "triton"), ("categorical_nade", "triton"), ("rnade", "triton"),
                                       ("made_sample", "cuda"), ("masked_linear", "reference"),
                                       ("made", "reference"), ("fvsbn", "reference")])
def test_auto_on_cuda_follows_the_gpu_measurement(op, first, monkeypatch):
    """With every kernel usable, ``auto`` on CUDA tensors takes what the H100 run measured fastest
    (README "GPU results"): Triton for the NADE family, CUDA for the one-launch samplers, the dense
    reference for the masked layers, and says why when it is the reference."""
    from armodel_fast.cli import _backend_note
    monkeypatch.setattr(dispatch, "_why_not", lambda *a, **k: None)
    cuda = torch.device("cuda")
    assert dispatch.resolve_backend("auto", op, cuda) == first
    assert dispatch.last_auto_pick() == (op, first, dispatch._SLOWER_ON_GPU if first == "reference" else None)
    auto_line = dispatch.explain(op, cuda).splitlines()[-1]
    assert auto_line.startswith(f"auto: {first}")
    assert ("measured slower than the dense reference" in auto_line) == (first == "reference")
    if first == "reference":
        assert "measured slower" in _backend_note(op, "reference", "auto", "cuda")
    for backend in ("cuda", "triton"):  # asked for by name, the kernels still run
        assert dispatch.resolve_backend(backend, op, cuda) == backend
    assert dispatch.resolve_backend("auto", op, torch.device("cpu")) == "cpp"  # the CPU rule is unchanged


def test_the_gpu_rule_is_not_cited_where_no_kernel_could_run(monkeypatch):
    """With no kernel able to run, explain() and the CLI give the kernels' own reasons, not the GPU rule."""
    from armodel_fast.cli import _backend_note
    monkeypatch.setattr(dispatch, "_why_not", lambda name, *a, **k: None if name == "reference" else "not built here")
    text = dispatch.explain("made", "cuda")
    assert text.splitlines()[-1] == "auto: reference" and "measured slower" not in text
    assert dispatch.resolve_backend("auto", "made", torch.device("cuda")) == "reference"
    assert dispatch.last_auto_pick() == ("made", "reference", None)
    assert "not built here" in _backend_note("made", "reference", "auto", "cuda")


def test_explain_refuses_an_unknown_op_and_knows_every_model():
    with pytest.raises(ValueError, match="op must be one of"):
        af.explain("foo")
    for model in (af.NADE(3, 2), af.FVSBN(3), af.MADE(3, [4]), af.ARRNN(3, 2), af.RNADE(3, 2, 2),
                  af.CategoricalNADE(3, 2, 3)):
        assert af.explain(type(model).op).splitlines()[0].startswith("reference: yes")


def test_optional_stages_are_not_required_of_a_backend(monkeypatch):
    """An optional stage (a faster form of the required ones where it applies) may be left out:
    a backend without it still implements the op, and optional_launcher says None."""
    monkeypatch.setattr(dispatch, "_TABLE", {})
    monkeypatch.setattr(dispatch, "_OPTIONAL_STAGES", set())
    dispatch.register("made", "forward", "reference")(lambda: "required")
    dispatch.register("made", "forward", "triton")(lambda: "required")
    dispatch.register("made", "fast_forward", "reference", optional=True)(lambda: "fast")
    assert dispatch.implements("triton", "made")
    assert dispatch.optional_launcher("made", "fast_forward", "triton") is None
    assert dispatch.optional_launcher("made", "fast_forward", "reference")() == "fast"
    dispatch.register("made", "backward", "reference")(lambda: "required")  # a required stage triton lacks
    assert not dispatch.implements("triton", "made")
