"""Command line: ``python -m armodel_fast {train,eval,sample,bench}`` (also ``armodel-fast``).

The work is done in :mod:`armodel_fast.training` and :mod:`armodel_fast.bench`;
this module only parses arguments and prints.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from .dispatch import (AUTO_ORDER, BACKENDS, BackendUnavailableError, auto_rule_says, explain, last_auto_pick,
                       resolve_backend)
from ._files import atomic_write_text
from ._user_errors import UserError, writable_dir


class CLIError(UserError):
    """A user error found here: like every :class:`UserError` (also those of
    ``training.commands``), printed as one ``error: ...`` line with exit status 2."""


def _console(stderr: bool = False):
    from rich.console import Console
    file = sys.stderr if stderr else sys.stdout
    # Piped output would otherwise be cut at 80 columns; COLUMNS still wins.
    width = None if file.isatty() or os.environ.get("COLUMNS") else 160
    return Console(file=file, highlight=False, markup=False, soft_wrap=True, width=width)


def _backend_note(op: str, ran: str, requested: str, device="cpu", size_rule=None) -> str:
    """``ran`` plus, when that is not a compiled kernel, one line on why not (``size_rule``:
    why auto's size rule chose the reference, if it did)."""
    if ran != "reference":
        return f"{ran} (compiled kernel)"
    if requested == "reference":
        return "reference (plain PyTorch, as requested with --backend reference)"
    ruled = auto_rule_says(op, torch.device(device))  # the GPU measurement's rule, or a torch.func transform
    if ruled:
        return f"reference (plain PyTorch; {ruled})"
    if size_rule:
        return f"reference (plain PyTorch; auto's size rule, README 'Choosing a backend': {size_rule})"
    preferred = [b for b in AUTO_ORDER.get(str(device).split(":")[0], ()) if b != "reference"]
    reasons = [line for line in explain(op, device).splitlines() if line.split(":")[0] in preferred]
    return "reference (plain PyTorch; " + "; ".join(reasons) + ")"


# ---------------------------------------------------------------------------- train / eval
def cmd_train(args, out) -> int:
    from .training.commands import cmd_train as run

    def note(model, requested, batch):
        """What a training step of ``batch`` rows per process will run (the size rule included)."""
        work = model.auto_work(batch) if hasattr(model, "auto_work") else None
        planned = resolve_backend(requested, model.op, model.device, work=work)
        why = last_auto_pick()[2] if requested == "auto" else None  # the size rule's reason, if it ruled
        return f"backend: {requested} -> " + _backend_note(model.op, planned, requested, model.device, why)
    try:
        return run(args, out, note)
    except BackendUnavailableError as e:
        raise CLIError(str(e)) from None


def cmd_eval(args, out) -> int:
    from .training.commands import cmd_eval as run
    if args.json:
        _writable_file(args.json, "--json")
    try:
        return run(args, out)
    except BackendUnavailableError as e:
        raise CLIError(f"--backend {args.backend}: {e}") from None


# ---------------------------------------------------------------------------- sample
def cmd_sample(args, out) -> int:
    import torch

    from .plotting import save_sample_grid
    from .training.checkpoint import CheckpointError
    from .training.commands import load_model

    if os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a directory; give the image's file name (e.g. {args.out}/samples.png)")
    _writable_file(args.out, "--out", ".png")
    try:
        model, ckpt = load_model(args.checkpoint, backend=args.backend)
    except BackendUnavailableError as e:
        raise CLIError(f"--backend {args.backend}: {e}") from None
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    gen = torch.Generator().manual_seed(args.seed)
    x, log_prob = model.sample(args.n, generator=gen, return_log_prob=True)
    name = ckpt["config"].get("name", "model")
    shape = ckpt.get("image_shape")
    if shape is None:
        raise CLIError(f"--checkpoint {args.checkpoint}: the data had no image shape (D={model.D} is not "
                       "a square), so there is no image grid to draw")
    if x.dtype == torch.long:  # categorical levels -> intensities
        x = x.float() / max(1, (model.K or 2) - 1)
    path = save_sample_grid(x, shape, args.out, title=f"{name}: {args.n} samples")
    out.print(f"{args.n} samples from {args.checkpoint} (backend {model.last_backend}, "
              f"mean log p {log_prob.mean().item():.2f} nats) written to {path}")
    return 0


# ---------------------------------------------------------------------------- bench
def cmd_bench(args, out) -> int:
    from . import bench

    compile_mode = {True: "on", False: "off", None: "auto"}[args.compile]
    if args.device is not None and args.device.split(":")[0] not in ("cpu", "cuda"):
        raise CLIError(f"--device {args.device}: unknown device; use cpu, cuda or cuda:N")
    try:
        cfg = bench.BenchConfig(B=args.B, D=args.D, H=args.H, repeats=args.repeats, device=args.device,
                                seed=args.seed, threads=args.threads, compile=compile_mode,
                                memory=not args.no_memory, filter=args.filter, sweep=args.sweep, quick=args.quick,
                                families=tuple(args.family or ()), interleave=args.interleave,
                                profile=args.profile, allocator=args.allocator)
    except ValueError as e:
        raise CLIError(str(e)) from e
    if cfg.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise CLIError(f"--device {cfg.device}: no CUDA GPU is usable here (torch {torch.__version__})")
    paths = {"json": args.json, "markdown": args.markdown, "plot": args.plot}
    if args.out:
        writable_dir(args.out, "--out")
        defaults = {"json": "bench.json", "markdown": "bench.md", "plot": "bench.png"}
        paths = {k: v or os.path.join(args.out, defaults[k]) for k, v in paths.items()}
    for flag, path in paths.items():  # every output path is checked before the benchmark runs
        if path:
            _writable_file(path, f"--{flag}", ".png" if flag == "plot" else None)
    rows = bench.all_rows(cfg)
    if not rows:
        raise CLIError(f"--filter {args.filter!r} selects no rows (it matches 'op provider', "
                       "e.g. 'masked_linear', 'nade sample', 'made fwd', 'reference')")
    info = bench.machine_info(cfg)
    results = bench.run_bench(cfg, rows=rows, console=out)
    try:
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    bench.print_tables(results, cfg, out, info)
    for path in bench.write_outputs(results, cfg, info, paths["json"], paths["markdown"], paths["plot"]):
        out.print(f"wrote {path}")
    if args.profile and args.out:
        path = os.path.join(args.out, "profile.txt")
        atomic_write_text(path, bench.profiles_text(results))
        out.print(f"wrote {path}")
    elif args.profile:
        out.print(bench.profiles_text(results))
    return 0


def _writable_file(path: str, flag: str, suffix: str = None) -> None:
    """``path`` can be written as a file (ending in ``suffix``, when given): not a directory, its
    folder writable (checked before any work; the write itself is atomic: ``_files``)."""
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path} is a directory; give a file name inside it")
    if suffix and not path.lower().endswith(suffix):
        raise CLIError(f"{flag} {path}: the file is written as {suffix[1:].upper()}; give a name ending in {suffix}")
    writable_dir(os.path.dirname(path) or ".", flag)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{flag}: file {path} is not writable; choose another path")


# ---------------------------------------------------------------------------- parser
def _number(s: str, kind, ok, want: str):
    """``kind(s)`` if it parses and ``ok`` holds for it, else argparse's error saying ``want``."""
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {want}, got {s!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {want}, got {s}")
    return v


def _positive_int(s: str) -> int:
    return _number(s, int, lambda v: v >= 1, "a positive integer")


def _positive_float(s: str) -> float:
    return _number(s, float, lambda v: 0 < v < float("inf"), "a positive finite number")


def _seed(s: str) -> int:
    return _number(s, int, lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)")


def _threads(s: str) -> int:
    v = _positive_int(s)
    limit = 4 * (os.cpu_count() or 1)
    if v > limit:
        raise argparse.ArgumentTypeError(f"must be at most {limit} (4 per CPU core here), got {v}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``error: ...`` (exit status 2)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .bench.core import COMPILE_AUTO_MAX_D
    from .bench.rows import ROW_BUILDERS

    p = _Parser(prog="armodel-fast", description="Train, sample and benchmark "
                                "autoregressive density models (NADE, FVSBN, MADE, ARRNN).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,eval,sample,bench}",
                           parser_class=_Parser)
    backends = ("auto",) + BACKENDS

    _train_parser(sub, backends)
    _eval_parser(sub, backends)

    s = sub.add_parser("sample", help="draw samples from a checkpoint into a PNG grid")
    s.add_argument("--checkpoint", required=True, help="model.pt written by train")
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--backend", choices=backends, default="auto")
    s.set_defaults(func=cmd_sample)

    b = sub.add_parser("bench", help="time NADE, masked_linear and MADE: reference forms, torch.compile, kernels",
                       description="Time every op (NADE log-prob fwd, fwd+bwd, sample; masked_linear fwd, "
                       "fwd+bwd; MADE fwd, sample) at its headline size (or a sweep): eager reference forms, "
                       "torch.compile and each kernel backend, with the ratio to the fastest eager reference "
                       "and peak memory.")
    b.add_argument("--sweep", action="store_true", help="several sizes per op, not just the headline one")
    b.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    b.add_argument("--B", type=_positive_int, default=None, help="batch size of every op (default: per op)")
    b.add_argument("--D", type=_positive_int, default=None, help="dimensions of every op (default: per op)")
    b.add_argument("--H", type=_positive_int, default=None,
                   help="hidden units of every op; MADE gets [H, H] (default: per op)")
    b.add_argument("--repeats", type=_positive_int, default=5, help="timed calls per row (median reported)")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    b.add_argument("--seed", type=_seed, default=0)
    b.add_argument("--threads", type=_threads, default=None,
                   help="torch threads per row (default: torch's default)")
    group = b.add_mutually_exclusive_group()
    group.add_argument("--compile", dest="compile", action="store_true", default=None,
                       help="include every torch.compile row (default: loops over D are compiled only "
                       f"when D <= {COMPILE_AUTO_MAX_D})")
    group.add_argument("--no-compile", dest="compile", action="store_false", help="no torch.compile rows")
    b.add_argument("--profile", action="store_true",
                   help="also profile one call of each kernel row (torch.profiler: host time, GPU kernel time, "
                        "host-device waits, the top ops) into DIR/profile.txt with --out, else after the tables; "
                        "not with --interleave")
    b.add_argument("--interleave", action="store_true",
                   help="time the providers of each op and size in turns, one call each per round, in a "
                        "new (seeded) order each round (a slow spell of a shared machine then hits them alike; "
                        "the ratios are steadier)")
    b.add_argument("--allocator", choices=("pinned", "default"), default="pinned",
                   help="pinned (default): fix glibc's malloc thresholds before timing (mmap 32 MiB, trim 64 MiB), "
                        "so a row's time does not depend on which rows ran before it; default: glibc's dynamic "
                        "thresholds, as a fresh process has them (rows that free a few MiB per call may then pay "
                        "page faults on every call)")
    b.add_argument("--no-memory", action="store_true",
                   help="time in this process and skip the per-row subprocess memory measurement")
    b.add_argument("--filter", help="only rows whose 'op provider' contains this text (e.g. masked_linear, "
                   "'made sample', cpp), plus the eager reference rows of those ops (for the ratio)")
    b.add_argument("--family", action="append", choices=tuple(ROW_BUILDERS),
                   help="only this op family (repeatable; default: all but flows, which is opt-in)")
    b.add_argument("--json", help="write the results (and machine info) to this JSON file")
    b.add_argument("--markdown", help="write a markdown table (for README.md) to this file")
    b.add_argument("--plot", help="write a PNG of speedups vs the best eager reference to this file")
    b.add_argument("--out", help="write bench.json, bench.md and bench.png into this directory "
                   "(--json/--markdown/--plot still override each path)")
    b.set_defaults(func=cmd_bench)
    return p


def _train_parser(sub, backends) -> None:
    from .training.loop import OPTIMIZERS, SCHEDULES
    from .training.models import HEADS, MODELS

    t = sub.add_parser("train", help="train a model (resumable; torchrun for several processes)",
                       description="Train any model on built-in or your own data. Options left out come from "
                       "--recipe, then from the run being resumed, then the defaults.")
    g = t.add_argument_group("model")
    g.add_argument("--model", choices=MODELS + ("categorical_nade",), metavar="{" + ",".join(MODELS) + "}",
                   help="default nade")
    g.add_argument("--head", choices=HEADS, help="MADE's output: bernoulli (default), categorical, gaussian")
    g.add_argument("--K", type=_positive_int, help="classes (categorical) or mixture components (rnade, "
                   "gaussian MADE); categorical default: read from the data")
    g.add_argument("--hidden", type=_positive_int, nargs="+", help="hidden units (default 128); MADE takes "
                   "one size per layer: --hidden 500 500")
    g.add_argument("--num-masks", type=_positive_int, help="MADE mask sets, switched every minibatch")
    g.add_argument("--direct", action="store_true", default=None, help="MADE direct input-output connections")
    g.add_argument("--order", help="natural (default), random, or a file of D integers (.npy or text)")
    g.add_argument("--cell", choices=("gru", "lstm", "rnn"), help="ARRNN cell (default gru)")
    g = t.add_argument_group("data")
    g.add_argument("--data", help="digits (default), mnist, or a file: .npy (memory-mapped), .npz "
                   "(train/valid/test keys or one array), .pt, .csv")
    g.add_argument("--data-path", help="for --data mnist: the train-images IDX file (.gz; first 50,000 "
                   "train, last 10,000 valid), an .npz, or a directory of .amat / IDX files")
    g.add_argument("--data-type", choices=("binary", "categorical", "real"),
                   help="default: read from the values (0/1, integers in [0, K), reals)")
    g.add_argument("--binarize", help="reals to 0/1: fixed (> 0.5), dynamic (resampled every minibatch), "
                   "stochastic (sampled once) or a threshold number")
    g.add_argument("--split", help="train,valid,test fractions for a file holding one array (default "
                   "0.8,0.1,0.1), drawn with --seed")
    g = t.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, help="default 10")
    g.add_argument("--batch-size", type=_positive_int, help="global batch (all processes), default 100")
    g.add_argument("--lr", type=_positive_float, help="default 1e-2 for digits, else 1e-3")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default none)")
    g.add_argument("--clip", type=_positive_float, help="clip the gradient norm to this")
    g.add_argument("--eval-every", type=_positive_int, help="validate every N steps (default: every epoch)")
    g.add_argument("--patience", type=_positive_int, help="stop after N validations without improvement")
    g.add_argument("--max-steps", type=_positive_int)
    g.add_argument("--max-minutes", type=_positive_float, help="stop (and checkpoint) after this long")
    g = t.add_argument_group("run")
    g.add_argument("--recipe", help="a recipes/NAME.toml (or a .toml path) of these options")
    g.add_argument("--out", help="run folder (default runs/<model>)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    g.add_argument("--checkpoint-every", type=_positive_int, help="also checkpoint every N steps")
    g.add_argument("--backend", choices=backends)
    g.add_argument("--seed", type=_seed)
    g.add_argument("--device", help="cpu (default), cuda, cuda:N; under torchrun cuda is each rank's GPU")
    g.add_argument("--threads", type=_threads, help="torch CPU threads")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-validation lines")
    t.set_defaults(func=cmd_train)


def _eval_parser(sub, backends) -> None:
    e = sub.add_parser("eval", help="NLL of a checkpoint on a data split, with a confidence interval (JSON)")
    e.add_argument("--checkpoint", required=True, help="model.pt / best.pt / last.pt, or a run folder")
    e.add_argument("--split", dest="split_name", choices=("train", "valid", "test"), default="valid",
                   help="which split of the data (default valid)")
    e.add_argument("--data", help="default: the data the model was trained on")
    e.add_argument("--data-path")
    e.add_argument("--ensemble", type=_positive_int, default=1,
                   help="MADE: average the probabilities of K mask sets (log-mean-exp)")
    e.add_argument("--backend", choices=backends)
    e.add_argument("--json", help="also write the JSON to this file")
    e.set_defaults(func=cmd_eval)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, _console())
    except UserError as e:  # CLIError and training.commands' UserError alike
        message, status = str(e), e.exit_code
    except KeyboardInterrupt:
        message, status = "interrupted", 130
    except OSError as e:  # a write that failed (disk full, a path that cannot hold files): the old file stays
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        message, status = f"cannot write{where}: {e.strerror or e}", 2
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process finds it: one line
        _console(stderr=True).print(f"error: {message}")
    return status
