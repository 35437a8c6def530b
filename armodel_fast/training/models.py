"""Every model and head by name, and which kind of data each one takes.

``build_model(**config)`` rebuilds a model from the plain dict a run stores, so a
checkpoint is self-contained. Kinds: ``binary`` (float 0/1), ``categorical``
(int64 in [0, K)), ``real`` (float).
"""
from __future__ import annotations

import torch

from ..nn import ARRNN, FVSBN, MADE, NADE, RNADE, CategoricalNADE

MODELS = ("nade", "categorical-nade", "rnade", "fvsbn", "made", "arrnn")
HEADS = ("bernoulli", "categorical", "gaussian")
HEAD_KIND = {"bernoulli": "binary", "categorical": "categorical", "gaussian": "real"}
ALIASES = {"categorical_nade": "categorical-nade"}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def data_kind(name: str, head: str = "bernoulli") -> str:
    """The kind of data model ``name`` (with MADE's ``head``) is trained on."""
    name = canonical(name)
    if name == "made":
        return HEAD_KIND[head]
    return {"categorical-nade": "categorical", "rnade": "real"}.get(name, "binary")


def needs_K(name: str, head: str = "bernoulli") -> bool:
    return data_kind(name, head) == "categorical" or canonical(name) == "rnade" \
        or (canonical(name) == "made" and head == "gaussian")


def _one_size(name: str, hidden) -> int:
    sizes = [hidden] if isinstance(hidden, int) else list(hidden)
    if len(sizes) != 1:
        raise ValueError(f"--hidden takes one size for {name}, got {sizes} (lists are for MADE)")
    return int(sizes[0])


def _permutation(order, D: int, seed: int):
    """None (natural), a seeded random permutation, or the given list of ints."""
    if order in (None, "natural"):
        return None
    if order == "random":
        return torch.randperm(D, generator=torch.Generator().manual_seed(int(seed)))
    if isinstance(order, str):
        raise ValueError(f"order must be 'natural', 'random' or a permutation, got {order!r}")
    perm = torch.as_tensor(list(order), dtype=torch.long)
    if perm.shape != (D,) or not torch.equal(torch.sort(perm).values, torch.arange(D)):
        raise ValueError(f"order must be a permutation of 0..{D - 1} (D={D}), got {len(perm)} values")
    return perm


def build_model(name: str, D: int, hidden=128, K=None, head: str = "bernoulli", num_masks: int = 1,
                order="natural", backend: str = "auto", seed: int = 0, cell: str = "gru",
                direct: bool = False):
    """A fresh model whose initial parameters depend on ``seed`` only.

    ``hidden``: one size (NADE variants, ARRNN; FVSBN ignores it) or a list per
    layer (MADE). ``K``: classes (categorical) or mixture components (RNADE,
    Gaussian MADE). ``head``, ``num_masks`` and ``direct`` are MADE's.
    """
    name = canonical(name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if name != "made" and (num_masks != 1 or head != "bernoulli" or direct):
        raise ValueError(f"--num-masks, --head and --direct apply to MADE only (model {name})")
    if needs_K(name, head) and K is None:
        raise ValueError(f"{name} needs --K (classes or mixture components)")
    perm = _permutation(order, D, seed)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the global RNG
        torch.manual_seed(int(seed))
        if name == "nade":
            return NADE(D, _one_size(name, hidden), order=perm, backend=backend)
        if name == "categorical-nade":
            return CategoricalNADE(D, _one_size(name, hidden), int(K), order=perm, backend=backend)
        if name == "rnade":
            return RNADE(D, _one_size(name, hidden), int(K), order=perm, backend=backend)
        if name == "fvsbn":
            return FVSBN(D, order=perm, backend=backend)
        if name == "arrnn":
            return ARRNN(D, _one_size(name, hidden), cell=cell, order=perm, backend=backend)
        sizes = [int(h) for h in ([hidden] if isinstance(hidden, int) else hidden)]
        made_order = "random" if order == "random" else perm
        return MADE(D, sizes, num_masks=num_masks, order=made_order, direct=bool(direct), out=head,
                    K=None if head == "bernoulli" else int(K), seed=int(seed), backend=backend)


def check_orders(model) -> None:
    """Every ordering a model holds is a permutation (``load_state_dict`` does not check)."""
    orders = model.orders if isinstance(model, MADE) else getattr(model, "order", None)
    if orders is None:
        return
    natural = torch.arange(model.D)
    for o in orders.reshape(-1, model.D):
        if not torch.equal(torch.sort(o.long().cpu()).values, natural):
            raise ValueError(f"its order {o.tolist()[:8]}... is not a permutation of 0..{model.D - 1}")
