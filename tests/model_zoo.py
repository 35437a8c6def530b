"""Small instances of every model, for the whole-model property tests."""
from __future__ import annotations

import itertools

import torch

import armodel_fast as af


def random_order(D: int, seed: int) -> torch.Tensor:
    return torch.randperm(D, generator=torch.Generator().manual_seed(seed))


def binary_models(D: int, seed: int = 0):
    """(name, model) pairs of every Bernoulli model with random, non-trivial weights."""
    torch.manual_seed(seed)
    o = random_order(D, seed)
    models = [
        ("fvsbn", af.FVSBN(D, order=o)),
        ("nade", af.NADE(D, 5, order=o)),
        ("nade-natural", af.NADE(D, 3)),
        ("made", af.MADE(D, [8, 7], order=o, seed=seed)),
        ("made-direct-masks", af.MADE(D, [9], num_masks=3, order="random", direct=True, seed=seed)),
        ("arrnn-gru", af.ARRNN(D, 6, order=o)),
        ("arrnn-lstm", af.ARRNN(D, 4, cell="lstm")),
    ]
    for _, m in models:
        randomize(m)
    return models


def randomize(model: torch.nn.Module, scale: float = 0.7) -> torch.nn.Module:
    """Fill every parameter with N(0, scale^2) so no test passes on zero weights."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model


def all_binary(D: int, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0, 1], repeat=D)), dtype=dtype)


def all_categorical(D: int, K: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K), repeat=D)), dtype=torch.long)


def positions(order: torch.Tensor) -> torch.Tensor:
    """pos[d] = step at which dimension d is modelled."""
    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel())
    return pos
