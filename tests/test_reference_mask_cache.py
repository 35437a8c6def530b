"""The reference backend's masked layers reuse the mask of a degree pair while both degree tensors live
unchanged, and never serves a mask of other degrees."""
import torch
import torch.nn.functional as F

import armodel_fast as af
from armodel_fast.ops.masked_linear import caching
from armodel_fast.ops.masked_linear.cache import degree_mask_for
from armodel_fast.reference.masked_linear import degree_mask, masked_linear


def dense(x, w, b, din, dout, strict):
    return F.linear(x, w * degree_mask(din, dout, strict, w.dtype), b)


def test_mask_is_reused_until_the_degrees_change():
    din, dout = torch.tensor([1, 2, 3, 1]), torch.tensor([2, 1, 3])
    first = degree_mask_for(din, dout, False, torch.float32, "cpu")
    assert degree_mask_for(din, dout, False, torch.float32, "cpu") is first
    assert degree_mask_for(din, dout, True, torch.float32, "cpu") is not first  # another key
    dout.copy_(torch.tensor([3, 3, 3]))  # MADE's mask switch writes the buffers in place
    again = degree_mask_for(din, dout, False, torch.float32, "cpu")
    torch.testing.assert_close(again, degree_mask(din, dout, False))
    assert bool(again.all())
    with caching(False):
        assert degree_mask_for(din, dout, False, torch.float32, "cpu") is not again


def test_fresh_degree_tensors_get_their_own_masks():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 6, generator=g), torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    dout = torch.tensor([1, 2, 3, 4])
    for _ in range(20):  # new in_degrees each call, possibly at a freed tensor's address
        din = torch.randint(1, 5, (6,), generator=g)
        got = masked_linear(x, w, b, din, dout, mask_of=degree_mask_for)
        torch.testing.assert_close(got, dense(x, w, b, din, dout, False))


def test_made_switching_masks_and_inference_mode_match_dense():
    torch.manual_seed(0)
    model = af.MADE(5, [7, 6], num_masks=3, order="random", backend="reference")
    x = (torch.rand(4, 5) < 0.5).float()
    with torch.inference_mode():  # not cached: an inference-mode mask could not be saved for backward
        model.log_prob(x)
    for _ in range(4):
        model.next_mask()
        hidden, output, _, _ = model._layer_args()
        h = x
        for w, b, din, dout in hidden:
            h = F.relu(dense(h, w, b, din, dout, False))
        want = dense(h, *output, True)
        torch.testing.assert_close(model(x), want)
        model.log_prob(x).sum().backward()  # a graph through the cached masks


def test_vmap_over_stacked_models_and_jit_trace_bypass_the_cache():
    """Batched degree buffers (vmap over stacked models) have no storage to key on, and a traced
    graph must read the degree buffers, not a cached mask: both build the mask."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap
    models = [af.MADE(4, [8], backend="reference", seed=s, order="random") for s in range(3)]
    x = (torch.rand(5, 4) < 0.5).float()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    torch.testing.assert_close(out, torch.stack([m(x) for m in models]))
    m = af.MADE(4, [8], backend="reference", order="random", num_masks=2)
    m(x)  # the masks are cached now
    traced = torch.jit.trace(m, (x,), check_trace=False)
    m.next_mask()
    torch.testing.assert_close(traced(x), m(x))
