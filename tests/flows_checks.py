"""Checks shared by the ported zuko / nflows / pyro transform tests (tests/test_flows_*.py)."""
import io

import pytest
import torch

from armodel_fast import _backend

# The fast backend runs where it is built; GPU backends need a GPU (not on a CPU-only machine).
BACKENDS = ["reference"] + [b for b in ("cpp", "cuda") if _backend._why_not(b, "made_sample", torch.device("cpu"))
                            is None]
backends = pytest.mark.parametrize("backend", BACKENDS)


def jacobian(f, x):
    """d f(x) / d x of a single point x [D] (f: [D] -> [D])."""
    return torch.autograd.functional.jacobian(f, x)


def assert_ladj_matches_jacobian(f, ladj, x, atol=1e-4):
    """ladj [] at x [D] equals log|det| of the autograd Jacobian of f at x."""
    J = jacobian(f, x)
    torch.testing.assert_close(ladj.detach(), torch.linalg.slogdet(J)[1], atol=atol, rtol=1e-4)
    return J


def assert_autoregressive(J, order):
    """J[i, j] = d out_i / d in_j may be nonzero only if j comes no later than i in ``order``
    (order[t] = the dimension at step t), and the diagonal is nonzero."""
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel())
    later = position[None, :] > position[:, None]  # [i, j]: j after i
    assert bool((J[later] == 0).all()), "an output depends on a later input"
    assert bool((J.diagonal() != 0).all())


def assert_grads_reach_every_parameter(module, loss):
    module.zero_grad()
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reached {missing}"


def reload(module, factory):
    """A fresh module from ``factory()`` loaded with ``module``'s saved state (through bytes)."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh = factory()
    fresh.load_state_dict(torch.load(buf))
    return fresh
