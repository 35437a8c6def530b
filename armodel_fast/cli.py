"""Command line: ``python -m armodel_fast {train,sample,bench}`` (also ``armodel-fast``).

The work is done in :mod:`armodel_fast.train` and :mod:`armodel_fast.bench`;
this module only parses arguments and prints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ._backend import AUTO_ORDER, BACKENDS, BackendUnavailableError, explain, resolve_backend

# Adam step sizes that train well in a few epochs: the 1197 digits give only
# 12 minibatches of 100 per epoch, MNIST gives 500.
DEFAULT_LR = {"digits": 1e-2, "mnist": 1e-3}


class CLIError(Exception):
    """A user error: printed as ``error: ...`` with exit status 2."""


def _console(stderr: bool = False):
    from rich.console import Console
    file = sys.stderr if stderr else sys.stdout
    # Piped output would otherwise be cut at 80 columns; COLUMNS still wins.
    width = None if file.isatty() or os.environ.get("COLUMNS") else 160
    return Console(file=file, highlight=False, markup=False, soft_wrap=True, width=width)


def _backend_note(op: str, ran: str, requested: str, device="cpu") -> str:
    """``ran`` plus, when that is not a compiled kernel, one line on why not."""
    if ran != "reference":
        return f"{ran} (compiled kernel)"
    if requested == "reference":
        return "reference (plain PyTorch, as requested with --backend reference)"
    preferred = [b for b in AUTO_ORDER.get(str(device).split(":")[0], ()) if b != "reference"]
    reasons = [line for line in explain(op, device).splitlines() if line.split(":")[0] in preferred]
    return "reference (plain PyTorch; " + "; ".join(reasons) + ")"


# ---------------------------------------------------------------------------- train
def cmd_train(args, out) -> int:
    import torch

    from . import train as T
    from .data import load_data

    torch.manual_seed(args.seed)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.data]
    try:
        data = load_data(args.data, args.data_path, args.binarize, seed=args.seed)
    except (OSError, ValueError) as e:
        raise CLIError(str(e)) from e
    D = data.dim
    hidden = args.hidden if args.hidden is not None else [128]
    config = {"name": args.model, "D": D, "hidden": hidden if args.model == "made" else hidden[0],
              "num_masks": args.num_masks, "order": args.order, "seed": args.seed,
              "backend": args.backend}
    if args.model != "made" and len(hidden) != 1:
        raise CLIError(f"--hidden takes one size for {args.model}, got {hidden} (lists are for MADE)")
    try:
        model = T.build_model(**config)
    except (TypeError, ValueError, BackendUnavailableError) as e:
        raise CLIError(str(e)) from e
    out_dir = args.out or os.path.join("runs", args.model)
    _writable_dir(out_dir, "--out")  # before training, not after
    if len(data.train) == 0:
        raise CLIError(f"the {args.data} training split is empty")
    n_params = sum(p.numel() for p in model.parameters())
    out.print(f"train {args.model} on {args.data} (D={D}; {len(data.train)}/{len(data.valid)}/"
              f"{len(data.test)} train/valid/test; {args.binarize} binarization): "
              f"{n_params:,} parameters, lr {lr:g}, batch {args.batch_size}, {args.epochs} epochs")
    planned = resolve_backend(args.backend, model.op, model.device)
    out.print(f"backend: {args.backend} -> " + _backend_note(model.op, planned, args.backend))

    def on_epoch(r):
        if not args.quiet:
            out.print(f"epoch {r['epoch']:3d}/{args.epochs}  train NLL {r['train_nll']:8.3f} nats  "
                      f"({r['examples_per_s']:,.0f} examples/s)")

    progress = not args.quiet and out.is_terminal
    try:
        history = T.train(model, data, args.epochs, lr, args.batch_size, args.seed,
                          progress=progress, console=out, on_epoch=on_epoch)
    except FloatingPointError as e:
        raise CLIError(str(e)) from e
    ran = model.last_backend
    train_time = sum(r["seconds"] for r in history)
    train_speed = len(data.train) * len(history) / train_time

    nll = {split: T.evaluate_nll(model, T.binary_split(data, split, args.seed), args.batch_size)
           for split in ("train", "valid", "test")}
    ensemble = None
    if args.model == "made" and args.num_masks > 1:
        ensemble = T.evaluate_nll(model, data.test, args.batch_size, ensemble=args.num_masks)
    speed = T.speed_vs_reference(model, config, data, args.batch_size, seed=args.seed)

    out.print("backend that ran: " + _backend_note(model.op, ran, args.backend))
    _print_nll_table(out, nll, ensemble, args.num_masks, D)
    out.print(f"speed: training {train_speed:,.0f} examples/s (incl. optimizer, {train_time:.1f} s); "
              f"forward+backward {speed['examples_per_s']:,.0f} examples/s vs reference "
              f"{speed['reference_examples_per_s']:,.0f} examples/s -> {speed['speedup']:.2f}x "
              f"({speed['batches']} minibatches of {speed['batch_size']})"
              + (" [the reference itself ran]" if ran == "reference" else ""))

    metrics = {
        "model": args.model, "data": args.data, "D": D, "epochs": args.epochs, "lr": lr,
        "batch_size": args.batch_size, "backend_requested": args.backend, "backend_ran": ran,
        **{f"{s}_nll": v for s, v in nll.items()},
        **{f"{s}_bits_per_dim": T.bits_per_dim(v, D) for s, v in nll.items()},
        "test_nll_ensemble": ensemble, "num_masks": args.num_masks,
        "train_examples_per_s": train_speed, "speed_vs_reference": speed, "history": history,
    }
    T.save_checkpoint(os.path.join(out_dir, "model.pt"), model, config, data.image_shape, metrics)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    out.print(f"saved {os.path.join(out_dir, 'model.pt')} and {os.path.join(out_dir, 'metrics.json')}")
    return 0


def _print_nll_table(out, nll: dict, ensemble, num_masks: int, D: int) -> None:
    from rich.table import Table

    from .train import bits_per_dim
    table = Table(title=f"negative log-likelihood (uniform baseline: {D * 0.6931471805599453:.2f} nats, 1 bit/dim)")
    for col in ("split", "NLL (nats)", "bits/dim"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, v in nll.items():
        table.add_row(split, f"{v:.3f}", f"{bits_per_dim(v, D):.4f}")
    if ensemble is not None:
        table.add_row(f"test, ensemble of {num_masks} masks", f"{ensemble:.3f}",
                      f"{bits_per_dim(ensemble, D):.4f}")
    out.print(table)


# ---------------------------------------------------------------------------- sample
def cmd_sample(args, out) -> int:
    import torch

    from .plotting import save_sample_grid
    from .train import CheckpointError, load_checkpoint

    try:
        model, ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    except (CheckpointError, BackendUnavailableError) as e:
        raise CLIError(str(e)) from e
    if os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a directory; give the image's file name (e.g. {args.out}/samples.png)")
    _writable_dir(os.path.dirname(args.out) or ".", "--out")
    gen = torch.Generator().manual_seed(args.seed)
    x, log_prob = model.sample(args.n, generator=gen, return_log_prob=True)
    name = ckpt["config"].get("name", "model")
    path = save_sample_grid(x, ckpt["image_shape"], args.out, title=f"{name}: {args.n} samples")
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
                                families=tuple(args.family or ()))
    except ValueError as e:
        raise CLIError(str(e)) from e
    if cfg.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise CLIError(f"--device {cfg.device}: no CUDA GPU is usable here (torch {torch.__version__})")
    paths = {"json": args.json, "markdown": args.markdown, "plot": args.plot}
    if args.out:
        _writable_dir(args.out, "--out")
        defaults = {"json": "bench.json", "markdown": "bench.md", "plot": "bench.png"}
        paths = {k: v or os.path.join(args.out, defaults[k]) for k, v in paths.items()}
    for flag, path in paths.items():  # every output path is checked before the benchmark runs
        if path:
            _writable_file(path, f"--{flag}")
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
    return 0


def _writable_dir(path: str, flag: str) -> None:
    """Create ``path`` (a directory) now, or say why it cannot be."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{flag}: cannot create directory {path}: {e.strerror or e}") from e
    if not os.access(path, os.W_OK):
        raise CLIError(f"{flag}: directory {path} is not writable; choose another path")


def _writable_file(path: str, flag: str) -> None:
    """``path`` can be written as a file: not a directory, its folder writable."""
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path} is a directory; give a file name inside it")
    _writable_dir(os.path.dirname(path) or ".", flag)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{flag}: file {path} is not writable; choose another path")


# ---------------------------------------------------------------------------- parser
def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``error: ...`` (exit status 2)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .bench.core import COMPILE_AUTO_MAX_D
    from .bench.rows import ROW_BUILDERS
    from .train import MODELS

    p = _Parser(prog="armodel-fast", description="Train, sample and benchmark "
                                "autoregressive density models (NADE, FVSBN, MADE, ARRNN).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,sample,bench}",
                           parser_class=_Parser)
    backends = ("auto",) + BACKENDS

    t = sub.add_parser("train", help="train a model, report NLL and speed against the reference")
    t.add_argument("--model", choices=MODELS, default="nade")
    t.add_argument("--data", choices=("digits", "mnist"), default="digits")
    t.add_argument("--data-path", help="MNIST .npz file or directory of .amat / IDX files")
    t.add_argument("--binarize", choices=("fixed", "dynamic"), default="fixed")
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="Adam learning rate (default: 1e-2 for digits, 1e-3 for mnist)")
    t.add_argument("--batch-size", type=_positive_int, default=100)
    t.add_argument("--hidden", type=_positive_int, nargs="+", default=None,
                   help="hidden units (default 128); MADE takes one size per layer: --hidden 500 500")
    t.add_argument("--num-masks", type=_positive_int, default=1,
                   help="MADE mask sets, switched every minibatch")
    t.add_argument("--order", choices=("natural", "random"), default="natural")
    t.add_argument("--backend", choices=backends, default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="output directory (default runs/<model>)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a checkpoint into a PNG grid")
    s.add_argument("--checkpoint", required=True, help="model.pt written by train")
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--seed", type=int, default=0)
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
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads per row (default: torch's default)")
    group = b.add_mutually_exclusive_group()
    group.add_argument("--compile", dest="compile", action="store_true", default=None,
                       help="include every torch.compile row (default: loops over D are compiled only "
                       f"when D <= {COMPILE_AUTO_MAX_D})")
    group.add_argument("--no-compile", dest="compile", action="store_false", help="no torch.compile rows")
    b.add_argument("--no-memory", action="store_true",
                   help="time in this process and skip the per-row subprocess memory measurement")
    b.add_argument("--filter", help="only rows whose 'op provider' contains this text (e.g. masked_linear, "
                   "'made sample', cpp), plus the eager reference rows of those ops (for the ratio)")
    b.add_argument("--family", action="append", choices=tuple(ROW_BUILDERS),
                   help="only this op family (repeatable; default: all of them)")
    b.add_argument("--json", help="write the results (and machine info) to this JSON file")
    b.add_argument("--markdown", help="write a markdown table (for README.md) to this file")
    b.add_argument("--plot", help="write a PNG of speedups vs the best eager reference to this file")
    b.add_argument("--out", help="write bench.json, bench.md and bench.png into this directory "
                   "(--json/--markdown/--plot still override each path)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, _console())
    except CLIError as e:
        _console(stderr=True).print(f"error: {e}")
        return 2
