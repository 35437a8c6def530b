"""Issue 11 part 5: every CLI user error is one line ``error: ...`` with exit status 2,
and output paths are checked before any work starts."""
import os

import pytest

from armodel_fast.cli import main
from armodel_fast.training import checkpoint as C


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fvsbn")
    assert main(["train", "--model", "fvsbn", "--epochs", "1", "--backend", "reference",
                 "--out", str(out), "--quiet"]) == 0
    return out / "model.pt"


def _damaged(checkpoint, tmp_path, edit):
    ckpt = C.load(checkpoint)
    edit(ckpt)
    path = tmp_path / "damaged.pt"
    C.save(path, ckpt)
    return path


@pytest.mark.parametrize("what,edit", [
    ("order", lambda c: c["state_dict"]["order"].fill_(-1)),
    ("image_shape", lambda c: c.__setitem__("image_shape", (3, 5))),
    ("config", lambda c: c.__setitem__("config", ["fvsbn"])),
])
def test_sample_on_a_damaged_checkpoint(checkpoint, tmp_path, capsys, what, edit):
    path = _damaged(checkpoint, tmp_path, edit)
    png = tmp_path / "s.png"
    rc = main(["sample", "--checkpoint", str(path), "--n", "4", "--out", str(png)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and what in line and str(path) in line
    assert not png.exists()


def test_bench_unknown_device(capsys):
    rc = main(["bench", "--device", "tpu", "--quick"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--device tpu" in line


def test_bench_unwritable_out_fails_before_the_benchmark(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc = main(["bench", "--quick", "--no-memory", "--out", str(blocker / "sub")])
    captured = capsys.readouterr()
    assert rc == 2 and "--out" in _one_error_line(captured.err)
    assert "[1/" not in captured.out  # no row ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_bench_read_only_out_fails_before_the_benchmark(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    rc = main(["bench", "--quick", "--no-memory", "--out", str(ro)])
    captured = capsys.readouterr()
    assert rc == 2 and "not writable" in _one_error_line(captured.err)
    assert "[1/" not in captured.out


def test_bench_unwritable_out_message_as_root_too(tmp_path, capsys, monkeypatch):
    """The 'not writable' branch of the output-folder check, also where the tests run as root
    (CI), which writes into read-only folders: os.access reports the folder unwritable."""
    import armodel_fast._user_errors as user_errors
    out = tmp_path / "out"
    real_access = os.access
    monkeypatch.setattr(user_errors.os, "access",
                        lambda path, mode: False if str(path) == str(out) else real_access(path, mode))
    rc = main(["bench", "--quick", "--no-memory", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and "not writable" in _one_error_line(captured.err)
    assert "[1/" not in captured.out


def test_train_with_a_huge_learning_rate_says_diverged(tmp_path, capsys):
    rc = main(["train", "--model", "nade", "--hidden", "16", "--lr", "1e6", "--epochs", "3",
               "--backend", "reference", "--out", str(tmp_path), "--quiet"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "diverged" in line and "learning rate" in line
    assert not (tmp_path / "model.pt").exists()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "abc"])
    assert e.value.code == 2
    assert "--epochs" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["train", "eval", "sample", "bench"])
def test_uncreatable_output_folder_is_one_line_from_every_command(checkpoint, tmp_path, capsys, command):
    """One folder check (armodel_fast._user_errors.writable_dir) serves the CLI's own commands and
    training.commands' train/eval; cli.main prints both error types as one line, exit status 2."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    bad = blocker / "sub"
    flag, argv = {
        "train": ("--out", ["train", "--model", "fvsbn", "--epochs", "1", "--backend", "reference", "--quiet",
                            "--out", str(bad)]),
        "eval": ("--json", ["eval", "--checkpoint", str(checkpoint), "--json", str(bad / "r.json")]),
        "sample": ("--out", ["sample", "--checkpoint", str(checkpoint), "--n", "4", "--out", str(bad / "s.png")]),
        "bench": ("--out", ["bench", "--quick", "--no-memory", "--out", str(bad)]),
    }[command]
    rc = main(argv)
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert rc == 2 and line.startswith(f"error: {flag}: cannot create directory ") and "choose another path" in line
    assert "[1/" not in captured.out  # no benchmark row ran
