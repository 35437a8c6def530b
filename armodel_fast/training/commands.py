"""``armodel-fast train`` and ``armodel-fast eval``: options in, run folder out.

A run folder holds ``last.pt`` (everything needed to resume), ``best.pt`` (the
model with the best validation NLL so far), ``model.pt`` (the model at the end:
the best one when there was validation), ``metrics.jsonl`` (one record per
validation), ``metrics.json`` (the summary) and ``learning_curve.png``.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np

from .._files import atomic_write_text
from ..dispatch import BackendUnavailableError
from .._user_errors import Interrupted, UserError, writable_dir
from . import checkpoint as ckpt
from .datasets import DataError, check_compatible, load_dataset
from .distributed import setup
from .loop import DivergedError, Settings, Trainer, split_nll
from .models import build_model, canonical, check_orders, data_kind
from .options import check_options, check_resume, split_fractions
from .recipes import load_recipe

DEFAULTS = {"model": "nade", "head": "bernoulli", "K": None, "hidden": None, "num_masks": 1, "direct": False,
            "order": "natural", "cell": "gru", "data": "digits", "data_path": None, "data_type": None,
            "binarize": None, "split": "0.8,0.1,0.1", "epochs": 10, "batch_size": 100, "lr": None,
            "optimizer": "adam", "momentum": 0.0, "weight_decay": 0.0, "schedule": "none", "clip": None,
            "eval_every": None, "patience": None, "checkpoint_every": None, "max_steps": None,
            "max_minutes": None, "backend": "auto", "seed": 0}
DEFAULT_LR = {"digits": 1e-2}  # anything else: 1e-3
RUN_FILES = ("last.pt", "best.pt", "model.pt", "metrics.jsonl", "metrics.json", "learning_curve.png")


def _resolve(args) -> tuple[dict, dict | None, str]:
    """Options (command line > recipe > resumed run > defaults), the resumed state, the run folder."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    recipe = {}
    if args.recipe:
        try:
            recipe = load_recipe(args.recipe)
        except ValueError as e:
            raise UserError(str(e)) from None
        unknown = sorted(set(recipe) - set(DEFAULTS))
        if unknown:
            raise UserError(f"--recipe {args.recipe}: unknown keys {unknown}; use train option names")
    saved = None
    run_dir = args.out
    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise UserError(f"--out {args.out} differs from --resume {args.resume}; drop --out")
        run_dir = args.resume
        try:
            saved = ckpt.load(os.path.join(args.resume, "last.pt"), "--resume: checkpoint")
        except ckpt.CheckpointError as e:
            raise UserError(str(e)) from None
        if "trainer" not in saved:
            raise UserError(f"--resume {args.resume}: last.pt holds no training state; start a new run")
    opts = {**DEFAULTS, **(saved["args"] if saved else {}), **recipe, **given}
    check_options(opts, {k: f"--recipe {args.recipe}" for k in recipe if k not in given}, set(recipe) | set(given))
    opts["model"] = canonical(opts["model"])
    if saved is not None:
        check_resume(args.resume, saved, {**recipe, **given})
    if opts["lr"] is None:
        opts["lr"] = DEFAULT_LR.get(opts["data"], 1e-3)
    if run_dir is None:
        run_dir = os.path.join("runs", opts["model"])
    if saved is None and not args.overwrite and os.path.exists(os.path.join(run_dir, "last.pt")):
        raise UserError(f"--out {run_dir} already holds a run (last.pt); continue it with --resume {run_dir}, "
                        "choose another --out, or add --overwrite")
    return opts, saved, run_dir


def _read_order(order):
    if order in ("natural", "random") or isinstance(order, list):
        return order
    if not os.path.isfile(str(order)):
        raise UserError(f"--order {order}: not natural, random or an existing file of D integers")
    try:
        values = np.load(order) if str(order).endswith(".npy") else np.loadtxt(order, delimiter=None, ndmin=1)
    except (ValueError, OSError) as e:
        raise UserError(f"--order {order}: cannot read integers from it ({e})") from None
    return [int(v) for v in np.asarray(values).reshape(-1)]


def model_config(opts: dict, data) -> dict:
    name, head = opts["model"], opts["head"]
    hidden = opts["hidden"] or [128]
    K = opts["K"]
    if data_kind(name, head) == "categorical" and K is None:
        K = data.K
    return {"name": name, "D": data.dim, "hidden": hidden[0] if name != "made" and len(hidden) == 1 else list(hidden),
            "K": K, "head": head, "num_masks": opts["num_masks"], "order": _read_order(opts["order"]),
            "seed": opts["seed"], "backend": opts["backend"], "cell": opts["cell"], "direct": bool(opts["direct"])}


def _device(ctx, requested):
    import torch
    requested = requested or "cpu"
    if requested.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: use cpu, cuda or cuda:N")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA GPU is usable here; use --device cpu")
    return ctx.device(requested)


def cmd_train(args, out, note_backend=None) -> int:
    ctx = setup()
    opts, saved, run_dir = _resolve(args)
    created = not os.path.exists(run_dir)
    try:
        return _train(args, out, note_backend, ctx, opts, saved, run_dir)
    except BaseException:
        if created and ctx.is_main and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)  # a run that wrote nothing leaves no empty folder behind
        raise


def _train(args, out, note_backend, ctx, opts, saved, run_dir) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if ctx.is_main:
        writable_dir(run_dir, "--resume" if saved else "--out")  # before any work
    split = split_fractions(opts["split"])
    try:
        data = load_dataset(opts["data"], opts["data_path"], opts["data_type"], opts["binarize"], split,
                            K=opts["K"] if data_kind(opts["model"], opts["head"]) == "categorical" else None,
                            seed=opts["seed"])
        check_compatible(data, opts["model"], data_kind(opts["model"], opts["head"]), opts["data"])
        config = model_config(opts, data)
        model = build_model(**config).to(_device(ctx, args.device))
    except (DataError, ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    settings = Settings(**{k: opts[k] for k in Settings.__dataclass_fields__})
    meta = {"config": config, "image_shape": data.image_shape, "data": data.spec, "args": opts}
    try:
        trainer = Trainer(model, data, settings, run_dir, meta, ctx, console=out,
                          progress=not args.quiet and out.is_terminal)
    except ValueError as e:
        raise UserError(str(e)) from None
    replaced = None
    if saved is not None:
        trainer.resume(saved)
    elif args.overwrite and ctx.is_main:  # only now that the options and data were accepted
        replaced = _set_aside(run_dir)
    ctx.barrier()
    try:
        _fit_and_save(args, out, ctx, opts, saved, run_dir, data, model, trainer, note_backend)
    except BaseException as e:
        has_ckpt = os.path.exists(os.path.join(run_dir, "last.pt"))  # (the new run's, before any restore)
        if replaced is not None and not has_ckpt:
            _restore(run_dir, replaced)  # the new run saved nothing: a failed replacement destroys nothing
            out.print(f"--overwrite: the new run stopped before its first checkpoint; the previous run in "
                      f"{run_dir} is restored")
        elif replaced is not None:  # the new run's checkpoint resumes it; the old one stays until it finishes
            out.print(f"--overwrite: the previous run is kept in {replaced} until this one finishes")
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(f"interrupted; continue with --resume {run_dir}" if has_ckpt else
                              "interrupted before the first checkpoint" + ("; the previous run is back"
                                                                           if replaced is not None else "")) from None
        raise
    if ctx.is_main:  # finished: a run this one replaced (--overwrite) goes now
        shutil.rmtree(os.path.join(run_dir, ".replaced"), ignore_errors=True)
    ctx.close()
    return 0


def _set_aside(run_dir: str):
    """Move the run files of ``run_dir`` into ``run_dir/.replaced`` (None: there were none)."""
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(run_dir, n))]
    if not present:
        return None
    keep = os.path.join(run_dir, ".replaced")
    shutil.rmtree(keep, ignore_errors=True)
    os.makedirs(keep)
    for name in present:
        os.replace(os.path.join(run_dir, name), os.path.join(keep, name))
    return keep


def _restore(run_dir: str, keep: str) -> None:
    for name in RUN_FILES:
        if os.path.exists(os.path.join(run_dir, name)):
            os.unlink(os.path.join(run_dir, name))
    for name in os.listdir(keep):
        os.replace(os.path.join(keep, name), os.path.join(run_dir, name))
    os.rmdir(keep)


def _fit_and_save(args, out, ctx, opts, saved, run_dir, data, model, trainer, note_backend) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    if ctx.is_main:
        out.print(f"train {opts['model']} on {opts['data']} ({data.kind}, D={data.dim}; {len(data.train)}/"
                  f"{len(data.valid)}/{len(data.test)} train/valid/test): {n_params:,} parameters, "
                  f"{opts['optimizer']} lr {opts['lr']:g}, batch {opts['batch_size']}, {opts['epochs']} epochs"
                  + (f", {ctx.world} processes" if ctx.active else "")
                  + (f"; resumed at step {trainer.state['step']}" if saved else ""))
        if note_backend:
            out.print(note_backend(model, opts["backend"], trainer.local_batch))

    def on_record(rec):
        if ctx.is_main and not args.quiet:
            out.print(f"epoch {rec['epoch']:3d} step {rec['step']:6d}  train NLL {rec['train_nll'] or math.nan:8.3f}"
                      f"  valid NLL {rec['valid_nll']:8.3f} nats  ({rec['seconds']:.0f} s)")

    try:
        state = trainer.fit(on_record)
    except DivergedError as e:
        raise UserError(str(e)) from None
    best = os.path.join(run_dir, "best.pt")
    if os.path.exists(best):
        try:
            model.load_state_dict(ckpt.load(best)["state_dict"])  # (copied onto the model's device)
        except (ckpt.CheckpointError, RuntimeError, KeyError) as e:
            raise UserError(f"{best} is not a checkpoint of this run's model ({str(e).splitlines()[0]}); "
                            "move it away and resume") from None
        if hasattr(model, "set_mask"):
            model.set_mask(int(model.mask_index))
    valid = split_nll(model, data, "valid")
    summary = {"model": opts["model"], "data": opts["data"], "D": data.dim, "steps": state["step"],
               "epochs_done": state["epoch"], "stopped": state["stopped"], "train_seconds": state["seconds"],
               "steps_per_s": state["step"] / state["seconds"] if state["seconds"] else None,
               "best_step": state["best_step"], "valid_nll": float(valid.mean()),
               "valid_bits_per_dim": float(valid.mean()) / (data.dim * math.log(2)),
               "backend_ran": state.get("train_backend") or model.last_backend, "eval_backend": model.last_backend,
               "options": opts}
    if ctx.is_main:
        ckpt.save(os.path.join(run_dir, "model.pt"), trainer.model_file(summary))
        atomic_write_text(os.path.join(run_dir, "metrics.json"), json.dumps(summary, indent=2, default=str))
        out.print(f"{state['stopped'] or 'finished'}: {state['step']} steps in {state['seconds']:.1f} s; "
                  f"validation NLL {summary['valid_nll']:.3f} nats ({summary['valid_bits_per_dim']:.4f} bits/dim) "
                  f"with the model of step {state['best_step'] or state['step']}; backend {summary['backend_ran']}")
        if model.last_backend != summary["backend_ran"]:  # auto's size rule: a validation batch is larger
            out.print(f"(the validation ran on {model.last_backend}: auto decides per call, by size)")
        written = [n for n in RUN_FILES if os.path.exists(os.path.join(run_dir, n))]
        out.print(f"run folder {run_dir}: {', '.join(written)}")


# ---------------------------------------------------------------------------- eval
def load_model(path: str, backend=None):
    """``(model, checkpoint)`` from a model.pt / best.pt / last.pt file or a run folder."""
    if os.path.isdir(path):
        path = next((os.path.join(path, f) for f in ("model.pt", "best.pt", "last.pt")
                     if os.path.isfile(os.path.join(path, f))), os.path.join(path, "model.pt"))
    saved = ckpt.load(path)
    if not isinstance(saved.get("config"), dict):
        raise ckpt.CheckpointError(f"checkpoint {path}: 'config' is a {type(saved.get('config')).__name__}, "
                                   "expected a dict of model options; retrain to get a new checkpoint")
    config = dict(saved["config"])
    if backend is not None:
        config["backend"] = backend
    try:
        model = build_model(**config)
        model.load_state_dict(saved["state_dict"])
        check_orders(model)
    except BackendUnavailableError:
        raise  # (the machine, not the checkpoint)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"checkpoint {path} does not match its config: {e}") from None
    shape = saved.get("image_shape")
    if shape is not None and (not isinstance(shape, (tuple, list)) or math.prod(int(s) for s in shape) != model.D):
        raise ckpt.CheckpointError(f"checkpoint {path}: image_shape {shape} does not match D={model.D}; "
                                   "retrain, or fix image_shape to (h, w) with h * w == D")
    if hasattr(model, "set_mask"):
        model.set_mask(int(model.mask_index))
    model.eval()
    return model, saved


def evaluate(model, data, split: str, ensemble: int = 1, batch_size: int = 1000) -> dict:
    """Mean NLL (nats, bits/dim) of ``split`` with a normal 95% confidence interval."""
    if len(data.split(split)) == 0:
        raise UserError(f"--split {split}: that split of the data is empty; choose train or valid")
    nll = split_nll(model, data, split, batch_size, ensemble)
    n, mean = len(nll), float(nll.mean())
    half = 1.96 * float(nll.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    per_bit = 1 / (model.D * math.log(2))
    return {"split": split, "n": n, "ensemble": ensemble, "nll": mean, "nll_ci95": [mean - half, mean + half],
            "bits_per_dim": mean * per_bit, "bits_per_dim_ci95": [(mean - half) * per_bit, (mean + half) * per_bit]}


def cmd_eval(args, out) -> int:
    try:
        model, saved = load_model(args.checkpoint, args.backend)
    except ckpt.CheckpointError as e:
        raise UserError(str(e)) from None
    if args.ensemble > 1 and getattr(model, "num_masks", 1) < args.ensemble:
        raise UserError(f"--ensemble {args.ensemble}: the model has {getattr(model, 'num_masks', 1)} mask set(s)"
                        " (only MADE with --num-masks >= K ensembles); use a smaller --ensemble")
    if args.json:
        writable_dir(os.path.dirname(os.path.abspath(args.json)), "--json")
    spec = dict(saved.get("data") or {})
    if args.data is not None:
        spec.update(source=args.data, data_path=args.data_path)
    spec.pop("K", None) if args.data is not None else None
    try:
        data = load_dataset(spec.get("source", "digits"), spec.get("data_path"), spec.get("data_type"),
                            spec.get("binarize"), tuple(spec.get("split", (0.8, 0.1, 0.1))),
                            K=spec.get("K"), seed=spec.get("seed", 0))
        check_compatible(data, saved["config"]["name"], data_kind(saved["config"]["name"],
                         saved["config"].get("head", "bernoulli")), spec.get("source"))
    except (DataError, ValueError) as e:
        raise UserError(str(e)) from None
    if data.dim != model.D:
        raise UserError(f"--data {spec.get('source')}: D={data.dim} but the model has D={model.D}")
    result = {"checkpoint": args.checkpoint, **evaluate(model, data, args.split_name, args.ensemble),
              "backend": model.last_backend}
    text = json.dumps(result, indent=2)
    out.print(text)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    return 0
