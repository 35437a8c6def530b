"""The training loop: optimizer, schedule, validation, early stopping, checkpoints.

Data order: every epoch draws its permutation from a ``DistributedSampler``
seeded by ``(seed, epoch)`` (one replica in a single process), so the position
in the epoch (``batch_in_epoch``) is all a resume needs; dynamic binarization
draws from a generator seeded by ``(seed, epoch, batch, rank)``. With W ranks
and global batch B, rank r takes rows r, r+W, ... of the same global batch as a
single process would (DDP averages the W equal-sized local means).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from .._files import atomic_write_bytes
from .._user_errors import UserError
from . import checkpoint as ckpt
from .distributed import Context

OPTIMIZERS = ("adam", "sgd", "adagrad")
SCHEDULES = ("none", "cosine", "plateau")
DIVERGENCE_FACTOR = 10.0


class DivergedError(FloatingPointError):
    """The training NLL became NaN/inf or rose beyond the bound."""


@dataclass
class Settings:
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "none"
    clip: float | None = None
    eval_every: int | None = None  # steps; None: once per epoch
    patience: int | None = None    # validations without improvement before stopping
    checkpoint_every: int | None = None  # steps; a checkpoint is also written every epoch
    max_steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0


def make_optimizer(params, s: Settings):
    """torch's fused optimizers where they run: one pass over each parameter instead of a chain of
    foreach ops, each a pass with its temporaries (a [2000, 2000] MADE's Adam update measured
    18.3 -> 3.1 ms on 2 CPU cores; Adagrad on 5.6M parameters 34.6 -> 5.5 ms). Adam and SGD on CPU
    and CUDA floating-point parameters, Adagrad on the CPU (torch 2.13 documents a CUDA fused Adagrad
    too; not taken here until it has been run on a GPU)."""
    params = list(params)

    def fused_on(*devices):
        ok = bool(params) and all(p.dtype.is_floating_point and p.device.type in devices for p in params)
        return ok or None

    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay, fused=fused_on("cpu", "cuda"))
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                               fused=fused_on("cpu", "cuda"))
    if s.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=s.lr, weight_decay=s.weight_decay, fused=fused_on("cpu"))
    raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {s.optimizer!r}")


def make_schedule(opt, s: Settings, total_steps: int):
    if s.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if s.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, (s.patience or 4) // 2))
    if s.schedule != "none":
        raise ValueError(f"--schedule must be one of {SCHEDULES}, got {s.schedule!r}")
    return None


def check_divergence(value: float, first: float, D: int, step: int, lr: float) -> None:
    """NaN/inf, or above ``first + DIVERGENCE_FACTOR * max(|first|, D)`` nats: diverged."""
    bound = first + DIVERGENCE_FACTOR * max(abs(first), D)
    if not math.isfinite(value) or value > bound:
        raise DivergedError(f"training diverged at step {step}: NLL {value:.4g} nats (first minibatch "
                            f"{first:.4g}, bound {bound:.4g}); try a smaller learning rate (--lr) than {lr:g}, or --clip")


@torch.no_grad()
def split_nll(model, data, split: str, batch_size: int = 1000, ensemble: int = 1) -> np.ndarray:
    """Per-example NLL in nats of every row of ``split`` (float64 [N])."""
    was_training = model.training
    model.eval()
    out = []
    for x in data.ordered_batches(split, batch_size):
        x = x.to(model.device)
        lp = model.log_prob(x, ensemble=ensemble) if ensemble != 1 else model.log_prob(x)
        out.append(-lp.double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


class Trainer:
    """Trains ``model`` on ``data``; every file goes to ``run_dir`` (rank 0 only).

    ``meta`` is stored in every checkpoint (model config, data spec, run args).
    """

    def __init__(self, model, data, settings: Settings, run_dir: str, meta: dict, ctx: Context | None = None,
                 console=None, progress: bool = False):
        self.model, self.data, self.s, self.run_dir, self.meta = model, data, settings, run_dir, meta
        self.ctx = ctx or Context()
        self.console, self.show_progress = console, progress
        if settings.batch_size % self.ctx.world:
            raise ValueError(f"--batch-size {settings.batch_size} must be a multiple of the "
                             f"{self.ctx.world} processes (it is the global batch)")
        self.local_batch = settings.batch_size // self.ctx.world
        self.loss_module = self.ctx.wrap(model)
        self.opt = make_optimizer(model.parameters(), settings)
        self.steps_per_epoch = math.ceil(len(self._order(0)) / self.local_batch)
        self.sched = make_schedule(self.opt, settings, settings.epochs * self.steps_per_epoch)
        self.switch_masks = getattr(model, "num_masks", 1) > 1
        self.state = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "best_valid": math.inf, "best_step": None,
                      "bad_evals": 0, "first_loss": None, "seconds": 0.0, "stopped": None,
                      "acc": [0.0, 0]}  # train NLL sum and count since the last record

    # ---- files ---------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def training_state(self) -> dict:
        return {**self.meta, "state_dict": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "schedule": self.sched.state_dict() if self.sched is not None else None,
                "trainer": dict(self.state), "settings": asdict(self.s), "rng": ckpt.rng_states()}

    def save_last(self) -> None:
        if self.ctx.is_main:
            ckpt.save(self.path("last.pt"), self.training_state())
        self.ctx.barrier()

    def resume(self, saved: dict) -> None:
        """Continue from a :meth:`training_state` dict (model, optimizer, schedule, RNGs, position)."""
        self.model.load_state_dict(saved["state_dict"])
        if hasattr(self.model, "set_mask"):
            self.model.set_mask(int(self.model.mask_index))
        self.opt.load_state_dict(saved["optimizer"])
        _check_optimizer_fits(self.opt)
        if self.sched is not None and saved.get("schedule") is not None:
            self.sched.load_state_dict(saved["schedule"])
        self.state.update(saved["trainer"], stopped=None)
        ckpt.set_rng_states(saved["rng"])
        if self.ctx.is_main and os.path.exists(self.path("metrics.jsonl")):  # drop records after the checkpoint
            # a record of the checkpoint's own step counts only if that validation preceded the save
            last = self.state["step"] if self.state.get("last_eval_step") == self.state["step"] else \
                self.state["step"] - 1
            with open(self.path("metrics.jsonl")) as f:
                keep = [line for line in f if line.strip() and json.loads(line)["step"] <= last]
            atomic_write_bytes(self.path("metrics.jsonl"), "".join(keep).encode())

    def model_file(self, metrics: dict) -> dict:
        return {**{k: self.meta[k] for k in ("config", "image_shape", "data")}, "metrics": metrics,
                "state_dict": self.model.state_dict()}

    def _record(self, valid_nll=None) -> dict:
        total, count = self.ctx.sum(self.state["acc"])
        self.state["acc"] = [0.0, 0]
        rec = {"epoch": self.state["epoch"], "step": self.state["step"],
               "train_nll": total / count if count else None, "valid_nll": valid_nll,
               "lr": self.opt.param_groups[0]["lr"], "seconds": round(self.state["seconds"], 3)}
        if self.ctx.is_main:
            with open(self.path("metrics.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    # ---- one epoch's data ------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.data.train)
        sampler = DistributedSampler(range(n), num_replicas=self.ctx.world, rank=self.ctx.rank, shuffle=True,
                                     seed=self.s.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))

    def _generator(self, epoch: int, k: int) -> torch.Generator:
        key = ((self.s.seed * 1_000_003 + epoch) * 1_000_003 + k) * 1_000_003 + self.ctx.rank
        return torch.Generator().manual_seed(key % (2 ** 63))

    # ---- validation ---------------------------------------------------------------
    def validate(self) -> dict:
        valid = float(split_nll(self.model, self.data, "valid").mean())
        rec = self._record(valid)
        st = self.state
        st["last_eval_step"] = st["step"]
        if valid < st["best_valid"]:
            st.update(best_valid=valid, best_step=st["step"], bad_evals=0)
            if self.ctx.is_main:
                ckpt.save(self.path("best.pt"), self.model_file({"valid_nll": valid, "step": st["step"],
                                                                 "epoch": st["epoch"]}))
        else:
            st["bad_evals"] += 1
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(valid)
        if self.s.patience is not None and st["bad_evals"] >= self.s.patience:
            st["stopped"] = f"early stopping: no better validation NLL in {self.s.patience} evaluations"
        return rec

    def _validate_and_report(self, on_record) -> None:
        rec = self.validate()
        if on_record is not None:
            on_record(rec)

    # ---- the loop -------------------------------------------------------------------
    def _step(self, x) -> float:
        loss = self.loss_module(x.to(self.model.device, non_blocking=True))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.s.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.clip)
        self.opt.step()
        if isinstance(self.sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.sched.step()
        value = loss.item()
        return self.ctx.sum([value])[0] / self.ctx.world if self.ctx.active else value

    def fit(self, on_record=None) -> dict:
        """Train until ``epochs``, ``max_steps``, ``max_minutes`` or early stopping; returns the state."""
        from .progress import progress_bar
        s, st = self.s, self.state
        self.model.train()
        deadline = time.monotonic() + 60 * s.max_minutes if s.max_minutes else None
        total = s.epochs * self.steps_per_epoch
        with progress_bar(self.console, self.show_progress and self.ctx.is_main) as bar:
            task = bar.add_task("training", total=total, completed=st["step"], nll=float("nan"))
            if s.max_steps and st["step"] >= s.max_steps:  # resumed from the checkpoint of its last step
                st["stopped"] = f"--max-steps {s.max_steps} reached"
            while st["epoch"] < s.epochs and st["stopped"] is None:
                order = self._order(st["epoch"])
                batches = [order[i:i + self.local_batch] for i in range(0, len(order), self.local_batch)]
                for k in range(st["batch_in_epoch"], len(batches)):
                    t0 = time.perf_counter()
                    if self.switch_masks:
                        self.model.next_mask()
                    value = self._step(self.data.batch("train", batches[k], self._generator(st["epoch"], k)))
                    st["train_backend"] = getattr(self.model, "last_backend", None)
                    if st["first_loss"] is None:
                        st["first_loss"] = value
                    check_divergence(value, st["first_loss"], self.model.D, st["step"] + 1, s.lr)
                    st["acc"] = [st["acc"][0] + value * len(batches[k]), st["acc"][1] + len(batches[k])]
                    st["step"] += 1
                    st["batch_in_epoch"] = k + 1
                    st["seconds"] += time.perf_counter() - t0
                    bar.update(task, advance=1, nll=value, description=f"epoch {st['epoch'] + 1}/{s.epochs}")
                    if s.eval_every and st["step"] % s.eval_every == 0:
                        self._validate_and_report(on_record)
                    if s.max_steps and st["step"] >= s.max_steps:
                        st["stopped"] = f"--max-steps {s.max_steps} reached"
                    if deadline is not None and self.ctx.any(time.monotonic() > deadline):
                        st["stopped"] = f"--max-minutes {s.max_minutes:g} reached"
                    if s.checkpoint_every and st["step"] % s.checkpoint_every == 0 or st["stopped"]:
                        self.save_last()
                    if st["stopped"]:
                        break
                else:
                    st["epoch"] += 1
                    st["batch_in_epoch"] = 0
                    if not s.eval_every:
                        self._validate_and_report(on_record)
                    self.save_last()
                    if self.ctx.is_main:
                        self.plot()
        limited = st["stopped"] is not None and st["stopped"].startswith("--max")
        if limited and st.get("last_eval_step") != st["step"]:  # the steps since the last validation count too
            self._validate_and_report(on_record)
            self.save_last()
        if self.ctx.is_main:
            self.plot()
        self.model.eval()
        return st

    def records(self) -> list:
        if not os.path.exists(self.path("metrics.jsonl")):
            return []
        with open(self.path("metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def plot(self) -> None:
        from ..plotting import save_learning_curve
        recs = self.records()
        if recs:
            save_learning_curve(recs, self.path("learning_curve.png"), D=self.model.D)


def _check_optimizer_fits(opt) -> None:
    """Every per-parameter optimizer state has its parameter's shape (``load_state_dict`` does not
    check: a mismatch would fail at the first step with an opaque size error)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for name, t in opt.state.get(p, {}).items():
                if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape != p.shape:
                    raise UserError(
                        f"--resume: the checkpoint's optimizer state {name!r} has shape {tuple(t.shape)} for a "
                        f"parameter of shape {tuple(p.shape)}: the run was saved with another model layout (e.g. a "
                        "K=1 gaussian MADE saved with 3 outputs per dimension, before its unused logit rows were "
                        "dropped); start a new run")
