"""Reference masked linear layer (docs/DESIGN.md sections 1 and 4).

The mask is defined by two degree vectors: ``M[k, j] = 1{out[k] >= in[j]}``
(hidden layers) or ``1{out[k] > in[j]}`` (strict: output layer, FVSBN, direct
connections). ``y = x @ (W * M).T + bias`` - exactly what libraries do today.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def degree_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor, strict: bool,
                dtype=torch.float32) -> torch.Tensor:
    """[out, in] 0/1 mask from the two degree vectors."""
    cmp = out_degrees[:, None] > in_degrees[None, :] if strict else out_degrees[:, None] >= in_degrees[None, :]
    return cmp.to(dtype)


def masked_linear(x, weight, bias, in_degrees, out_degrees, strict: bool = False, mask_of=None) -> torch.Tensor:
    """x [B, in], weight [out, in], bias [out] or None -> [B, out].

    ``mask_of(in_degrees, out_degrees, strict, dtype, device)``: where the mask comes from
    (default: built by :func:`degree_mask`; the reference backend passes its cache)."""
    if mask_of is None:
        mask = degree_mask(in_degrees, out_degrees, strict, weight.dtype).to(weight.device)
    else:
        mask = mask_of(in_degrees, out_degrees, strict, weight.dtype, weight.device)
    return F.linear(x, weight * mask, bias)
