"""Training and evaluation helpers behind ``python -m armodel_fast train|sample``.

Everything here is a plain function so it can be used from Python as well as
from the CLI::

    from armodel_fast.data import load_data
    from armodel_fast.train import build_model, train, evaluate_nll

    data = load_data("digits")
    model = build_model("nade", data.dim, hidden=128, seed=0)
    history = train(model, data, epochs=5, lr=5e-3, batch_size=100, seed=0)
    print(evaluate_nll(model, data.test))          # mean NLL in nats

Checkpoints (``save_checkpoint`` / ``load_checkpoint``) are dicts holding
``config`` (the :func:`build_model` arguments), ``state_dict``, ``image_shape``
and ``metrics``; they load with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch

from ._backend import BackendUnavailableError
from .data import DataSplits, iterate_minibatches
from .nn import ARRNN, FVSBN, MADE, NADE

MODELS = ("nade", "fvsbn", "made", "arrnn")
CHECKPOINT_KEYS = ("config", "state_dict", "image_shape", "metrics")


class CheckpointError(ValueError):
    """A checkpoint file is missing or cannot be used; the message names the path."""


def _as_hidden_list(hidden) -> list:
    return [hidden] if isinstance(hidden, int) else list(hidden)


def _as_hidden_int(name: str, hidden) -> int:
    sizes = _as_hidden_list(hidden)
    if len(sizes) != 1:
        raise ValueError(f"{name} takes one hidden size, got {sizes} (only MADE takes a list)")
    return sizes[0]


def build_model(name: str, D: int, hidden=128, K=None, num_masks: int = 1, order: str = "natural",
                backend: str = "auto", seed: int = 0, cell: str = "gru", direct: bool = False):
    """Build a fresh model; its initial parameters depend on ``seed`` only.

    ``hidden`` is an int (or a one-element list) for NADE/ARRNN, a list of layer
    sizes for MADE, and ignored by FVSBN. ``order`` is ``"natural"`` or
    ``"random"`` (a permutation drawn from ``seed``; for MADE every mask set draws
    its own). ``K``, ``num_masks`` and ``direct`` apply to MADE only.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    if order not in ("natural", "random"):
        raise ValueError(f"order must be 'natural' or 'random', got {order!r}")
    if name != "made" and num_masks != 1:
        raise ValueError(f"num_masks applies to MADE only, got num_masks={num_masks} for {name}")
    perm = None
    if order == "random":
        perm = torch.randperm(D, generator=torch.Generator().manual_seed(int(seed)))
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the global RNG
        torch.manual_seed(int(seed))
        if name == "nade":
            return NADE(D, _as_hidden_int(name, hidden), order=perm, backend=backend)
        if name == "fvsbn":
            return FVSBN(D, order=perm, backend=backend)
        if name == "arrnn":
            return ARRNN(D, _as_hidden_int(name, hidden), cell=cell, order=perm, backend=backend)
        return MADE(D, _as_hidden_list(hidden), num_masks=num_masks,
                    order="random" if order == "random" else None, direct=direct, K=K,
                    seed=int(seed), backend=backend)


def _log_prob(model, x, ensemble: int = 1):
    if ensemble != 1:
        return model.log_prob(x, ensemble=ensemble)
    return model.log_prob(x)


@torch.no_grad()
def evaluate_nll(model, x: torch.Tensor, batch_size: int = 1000, ensemble: int = 1) -> float:
    """Mean negative log-likelihood of the rows of ``x`` in nats.

    ``ensemble=k`` (MADE only) averages the probabilities of k mask sets.
    """
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate the NLL of an empty split")
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        total -= _log_prob(model, x[start:start + batch_size], ensemble).double().sum().item()
    return total / x.shape[0]


def binary_split(data: DataSplits, split: str, seed: int = 0) -> torch.Tensor:
    """A 0/1 version of a split; the dynamic train split is binarized once from ``seed``."""
    x = getattr(data, split)
    if split == "train" and data.dynamic:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(int(seed)))
    return x


def bits_per_dim(nll_nats: float, D: int) -> float:
    return nll_nats / (D * math.log(2))


def _progress(console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True, disable=not enabled)


def train(model, data: DataSplits, epochs: int, lr: float, batch_size: int, seed: int,
          progress: bool = True, console=None, on_epoch=None) -> list:
    """Fit ``model`` by Adam on the mean NLL of the train split.

    Minibatches are shuffled (and, for dynamic binarization, re-binarized) by a
    generator seeded with ``seed``. A MADE with several mask sets switches to
    the next one before every minibatch. ``progress`` shows a rich progress bar
    (on ``console``); ``on_epoch(record)`` is called after every epoch.

    Returns the history: one dict per epoch with ``epoch``, ``train_nll``
    (running mean over the epoch's minibatches, nats), ``seconds`` and
    ``examples_per_s``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    switch_masks = isinstance(model, MADE) and model.num_masks > 1
    n_batches = math.ceil(data.train.shape[0] / batch_size)
    history, first = [], None
    model.train()
    with _progress(console, progress) as bar:
        task = bar.add_task("training", total=epochs * n_batches)
        for epoch in range(1, epochs + 1):
            total, count, t0 = 0.0, 0, time.perf_counter()
            for x in iterate_minibatches(data, "train", batch_size, shuffle=True, generator=gen):
                if switch_masks:
                    model.next_mask()
                loss = -model.log_prob(x).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = loss.item()
                first = value if first is None else first
                check_divergence(value, first, model.D, f"epoch {epoch}", lr)
                total += value * x.shape[0]
                count += x.shape[0]
                bar.update(task, advance=1,
                           description=f"epoch {epoch}/{epochs}  NLL {total / count:7.3f}")
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch, "train_nll": total / count, "seconds": seconds,
                      "examples_per_s": count / seconds}
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
    model.eval()
    return history


DIVERGENCE_FACTOR = 10.0


def check_divergence(value: float, first: float, D: int, where: str, lr) -> None:
    """Raise FloatingPointError when a training NLL is NaN/inf or has risen beyond
    ``first + DIVERGENCE_FACTOR * max(|first|, D)`` nats (``first``: the run's first minibatch)."""
    bound = first + DIVERGENCE_FACTOR * max(abs(first), D)
    if not math.isfinite(value) or value > bound:
        raise FloatingPointError(f"training diverged at {where}: NLL {value:.4g} nats (first minibatch "
                                 f"{first:.4g}, bound {bound:.4g}); try a smaller learning rate than {lr:g}")


def fwd_bwd_examples_per_s(model, batches) -> float:
    """Examples/s of ``-log_prob(x).mean()`` forward + backward: the median over
    ``batches`` of each batch's rate, after one untimed warm-up batch (the median
    keeps a busy machine's hiccups out). Gradients are cleared afterwards."""
    def step(x):
        (-model.log_prob(x).mean()).backward()

    step(batches[0])
    rates = []
    for x in batches:
        t0 = time.perf_counter()
        step(x)
        rates.append(x.shape[0] / (time.perf_counter() - t0))
    model.zero_grad(set_to_none=True)
    return statistics.median(rates)


def speed_vs_reference(model, config: dict, data: DataSplits, batch_size: int,
                       n_batches: int = 5, seed: int = 0) -> dict:
    """Forward+backward speed of ``model`` and of the same model on ``backend="reference"``,
    timed on the same ``n_batches`` training minibatches.

    Returns ``{"backend", "examples_per_s", "reference_examples_per_s", "speedup"}``
    (``speedup`` > 1 means faster than the reference). When ``model`` itself
    runs the reference, it is timed once and the speedup is 1.
    """
    gen = torch.Generator().manual_seed(int(seed))
    it = iterate_minibatches(data, "train", batch_size, shuffle=True, generator=gen)
    batches = [x for _, x in zip(range(n_batches), it)]
    ours = fwd_bwd_examples_per_s(model, batches)
    backend = model.last_backend
    if backend == "reference":
        ref = ours
    else:
        ref_model = build_model(**{**config, "backend": "reference"})
        ref_model.load_state_dict(model.state_dict())
        ref = fwd_bwd_examples_per_s(ref_model, batches)
    return {"backend": backend, "examples_per_s": ours, "reference_examples_per_s": ref,
            "speedup": ours / ref, "batches": len(batches), "batch_size": batch_size}


def save_checkpoint(path, model, config: dict, image_shape, metrics: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"config": dict(config), "state_dict": model.state_dict(),
                "image_shape": tuple(int(s) for s in image_shape), "metrics": metrics}, path)


def load_checkpoint(path, backend=None):
    """Rebuild the model saved at ``path``; returns ``(model, checkpoint_dict)``.

    ``backend`` overrides the backend recorded in the config. Raises
    :class:`CheckpointError` naming ``path`` when it is missing or unusable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"cannot read checkpoint {path!r}: not a torch.save file written by "
                              f"`armodel-fast train` ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path!r} is not an armodel-fast checkpoint "
                              f"(expected a dict with keys {CHECKPOINT_KEYS})")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"checkpoint {path!r}: 'config' is a {type(ckpt['config']).__name__}, "
                              "expected a dict of build_model arguments; retrain to get a new checkpoint")
    config = dict(ckpt["config"])
    if backend is not None:
        config["backend"] = backend
    try:
        model = build_model(**config)
        model.load_state_dict(ckpt["state_dict"])
    except BackendUnavailableError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path!r} does not match its config: {e}") from e
    check_orders(model, path)
    shape = ckpt["image_shape"]
    if shape is not None and (not isinstance(shape, (tuple, list)) or math.prod(int(s) for s in shape) != model.D):
        raise CheckpointError(f"checkpoint {path!r}: image_shape {shape} does not match D={model.D}; "
                              "retrain, or fix image_shape to (h, w) with h * w == D")
    if isinstance(model, MADE):
        model.set_mask(int(model.mask_index))  # re-apply the saved mask set's degrees
    model.eval()
    return model, ckpt


def check_orders(model, path) -> None:
    """Every ordering a loaded model holds is a permutation of 0..D-1 (load_state_dict does not check)."""
    orders = model.orders if isinstance(model, MADE) else getattr(model, "order", None)
    if orders is None:
        return
    natural = torch.arange(model.D)
    for o in orders.reshape(-1, model.D) if orders.numel() else []:
        if not torch.equal(torch.sort(o.long().cpu()).values, natural):
            raise CheckpointError(f"checkpoint {path!r}: its order {o.tolist()[:8]}... is not a permutation "
                                  f"of 0..{model.D - 1}; the file is damaged: retrain")
