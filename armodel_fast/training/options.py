"""The options of ``armodel-fast train``, checked wherever they come from (the command line, a
recipe, the run being resumed): types and ranges, options that do not apply to the model or
data, and what a resumed run cannot change. Every error names the option."""
from __future__ import annotations

import math
import os

from .._user_errors import UserError
from .._validate import as_int
from ..dispatch import BACKENDS
from ..nn.arrnn import CELLS
from .datasets import BINARIZE, KINDS
from .loop import OPTIMIZERS, SCHEDULES
from .models import ALIASES, HEADS, MODELS, canonical

# Options that fix what a run is; a resumed run must not change them.
IDENTITY = ("model", "head", "K", "hidden", "num_masks", "direct", "order", "cell", "data", "data_path",
            "data_type", "binarize", "split", "seed", "batch_size", "optimizer", "schedule")


def check_resume(run: str, saved: dict, asked: dict) -> None:
    """What a resumed run cannot change (from the command line or a recipe): what the run is
    (IDENTITY), its optimizer's settings (restored with the optimizer's state), a cosine schedule's
    length, and the epochs already done."""
    for key in IDENTITY + ("lr", "momentum", "weight_decay"):
        if key in asked and asked[key] != saved["args"].get(key):
            flag = "--" + key.replace("_", "-")
            raise UserError(f"--resume {run}: the run was made with {flag} {saved['args'].get(key)}, not "
                            f"{asked[key]} (a resumed run keeps its settings and its optimizer's state); drop {flag} "
                            "or start a new run with another --out")
    trainer = saved["trainer"]
    max_steps, step = asked.get("max_steps", saved["args"].get("max_steps")), trainer.get("step", 0)
    finished = trainer.get("last_eval_step") == step and os.path.exists(os.path.join(run, "model.pt"))
    if max_steps is not None and step >= max_steps and finished:  # (killed before its last validation: resumes)
        raise UserError(f"--resume {run}: the run stopped at --max-steps {max_steps} (it counts all the run's "
                        "steps); give a larger --max-steps to continue it")
    done, epochs = trainer.get("epoch", 0), asked.get("epochs")
    if epochs is not None and epochs != saved["args"].get("epochs"):
        if saved["args"].get("schedule") == "cosine":
            raise UserError(f"--epochs {epochs}: the run's cosine schedule was laid out over "
                            f"{saved['args'].get('epochs')} epochs and extending it would restart the cycle; "
                            "resume without --epochs, or start a new run")
        if epochs <= done:
            raise UserError(f"--epochs {epochs}: the run has done {done} epochs already; give more to "
                            "continue it")


_POSITIVE_INT = ("epochs", "batch_size", "num_masks")
_OPTIONAL_POSITIVE_INT = ("K", "eval_every", "patience", "checkpoint_every", "max_steps")
_OPTIONAL_POSITIVE_FLOAT = ("clip", "max_minutes")
_CHOICES = {"model": MODELS + tuple(ALIASES), "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "head": HEADS,
            "cell": tuple(CELLS), "data_type": (None,) + KINDS, "backend": ("auto",) + BACKENDS}


def split_fractions(split) -> tuple:
    """``"0.8,0.1,0.1"`` (the command line) or ``[0.8, 0.1, 0.1]`` (a recipe) as floats."""
    return tuple(float(v) for v in (split.split(",") if isinstance(split, str) else split))


def check_options(opts: dict, source: dict, asked=()) -> None:
    """Every option's type and range, whichever of the command line, a recipe (``source[key]``
    names it) or the resumed run set it, and that each option ``asked`` for (command line or
    recipe) applies to this model and data; the error names the option and where it came from."""
    def bad(key, why):
        where = f" (from {source[key]})" if key in source else ""
        return UserError(f"--{key.replace('_', '-')} {opts[key]!r}{where}: {why}")

    def is_int(v):
        return as_int(v) is not None

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    for key in _POSITIVE_INT + _OPTIONAL_POSITIVE_INT:
        if not (opts[key] is None and key in _OPTIONAL_POSITIVE_INT) and not (is_int(opts[key]) and opts[key] >= 1):
            raise bad(key, "must be a positive integer")
    for key in _OPTIONAL_POSITIVE_FLOAT + ("lr",):
        if opts[key] is not None and not (is_number(opts[key]) and opts[key] > 0):
            raise bad(key, "must be a positive finite number")
    if not (is_number(opts["momentum"]) and 0 <= opts["momentum"] < 1):
        raise bad("momentum", "must be a number in [0, 1)")
    if not (is_number(opts["weight_decay"]) and opts["weight_decay"] >= 0):
        raise bad("weight_decay", "must be a finite number >= 0")
    if not (is_int(opts["seed"]) and 0 <= opts["seed"] < 2 ** 63):
        raise bad("seed", "must be an integer in [0, 2**63)")
    if is_int(opts["hidden"]):  # a recipe's ``hidden = 500``: one layer
        opts["hidden"] = [opts["hidden"]]
    hidden = opts["hidden"]
    if hidden is not None and not (isinstance(hidden, (list, tuple)) and hidden and all(is_int(h) and h >= 1
                                                                                       for h in hidden)):
        raise bad("hidden", "must be a list of positive integers, e.g. [500, 500]")
    if not isinstance(opts["direct"], bool):
        raise bad("direct", "must be true or false")
    for key, choices in _CHOICES.items():
        if opts[key] not in choices:
            raise bad(key, f"must be one of {[c for c in choices if c is not None]}")
    try:
        parts = list(split_fractions(opts["split"]))
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 3 or not all(math.isfinite(v) and v >= 0 for v in parts) or not parts[0] > 0:
        raise bad("split", "must be three fractions train,valid,test (>= 0, train > 0), e.g. 0.8,0.1,0.1")
    model, head = canonical(opts["model"]), opts["head"]
    applies = {"split": (opts["data"] not in ("digits", "mnist"), "it splits a file holding one array; "
                         f"--data {opts['data']} comes with its own splits"),
               "data_path": (opts["data"] == "mnist", "it is where --data mnist is read from"),
               "K": (model in ("categorical-nade", "rnade") or (model == "made" and head != "bernoulli"),
                     "only categorical models, RNADE and MADE's categorical/gaussian heads have K"),
               "cell": (model == "arrnn", "only --model arrnn has a cell"),
               "momentum": (opts["optimizer"] == "sgd", f"--optimizer {opts['optimizer']} has no momentum")}
    for key, (ok, why) in applies.items():
        if key in asked and not ok:
            raise bad(key, f"does not apply here: {why}")
    binarize = opts["binarize"]
    if binarize is not None and binarize not in BINARIZE:
        try:
            threshold = float(binarize)
        except (TypeError, ValueError):
            threshold = math.nan
        if not math.isfinite(threshold):
            raise bad("binarize", "must be fixed, dynamic, stochastic or a finite threshold number")
