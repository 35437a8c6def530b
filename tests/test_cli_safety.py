"""The CLI never destroys a good file and checks every option wherever it comes from
(command line, a recipe, the resumed run): findings of a hostile new-user review."""
import json
import os

import pytest

from armodel_fast import _files
from armodel_fast.cli import main


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _train(*args):
    try:
        return main(["train", "--model", "fvsbn", "--backend", "reference", "--quiet", *args])
    except SystemExit as e:  # argparse's own errors (also one line: cli._Parser)
        return e.code


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert _train("--epochs", "2", "--out", str(out)) == 0
    return out


def test_overwrite_that_fails_early_restores_the_previous_run(tmp_path, capsys):
    out = tmp_path / "good"
    assert _train("--epochs", "1", "--out", str(out)) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert _train("--epochs", "1", "--out", str(out), "--overwrite", "--optimizer", "sgd", "--lr", "1e30") == 2
    assert "diverged" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # every file as it was
    assert _train("--epochs", "1", "--out", str(out), "--overwrite") == 0  # a finished replacement replaces
    assert not (out / ".replaced").exists()


def test_a_failed_image_write_keeps_the_old_file(run, tmp_path, monkeypatch, capsys):
    png = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(run / "model.pt"), "--out", str(png)]) == 0
    good = png.read_bytes()

    def full_disk(path, payload):
        with open(path + ".partial", "wb") as f:  # (what a plain open(path, "wb") would have done to path)
            f.write(payload[:10])
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(_files, "atomic_write_bytes", full_disk)
    assert main(["sample", "--checkpoint", str(run / "model.pt"), "--out", str(png), "--n", "9"]) == 2
    assert "No space left on device" in _error(capsys)
    assert png.read_bytes() == good


@pytest.mark.parametrize("recipe,flag", [("epochs = 0", "--epochs 0"), ("epochs = 1.5", "--epochs 1.5"),
                                         ('batch_size = "abc"', "--batch-size 'abc'"),
                                         ("lr = -1.0", "--lr -1.0"), ('optimizer = "lbfgs"', "--optimizer"),
                                         ("momentum = 2.0", "--momentum 2.0")])
def test_recipe_values_are_checked_like_options(tmp_path, capsys, recipe, flag):
    path = tmp_path / "r.toml"
    path.write_text(recipe + "\n")
    assert _train("--recipe", str(path), "--out", str(tmp_path / "o")) == 2
    line = _error(capsys)
    assert flag in line and "from --recipe" in line


def test_recipe_hidden_may_be_one_int(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('model = "nade"\nhidden = 16\nepochs = 1\n')
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["options"]["hidden"] == [16]


@pytest.mark.parametrize("args,text", [(["--lr", "0.5"], "--lr"), (["--momentum", "0.5"], "--momentum"),
                                       (["--epochs", "1"], "done 2 epochs")])
def test_resume_refuses_what_it_would_ignore(run, capsys, args, text):
    assert main(["train", "--resume", str(run), "--quiet", *args]) == 2
    assert text in _error(capsys)


def test_resume_refuses_a_recipe_that_changes_the_run(run, tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text("hidden = [64]\n")
    assert main(["train", "--resume", str(run), "--recipe", str(path), "--quiet"]) == 2
    assert "--hidden" in _error(capsys)


def test_cosine_run_cannot_be_extended(tmp_path, capsys):
    out = tmp_path / "cos"
    assert _train("--epochs", "1", "--schedule", "cosine", "--out", str(out)) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3", "--quiet"]) == 2
    assert "cosine" in _error(capsys)


@pytest.mark.parametrize("args,text", [
    (["--split", "a,b,c"], "--split"), (["--split", "0.5,0.5,0"], "does not apply"),
    (["--momentum", "0.9"], "no momentum"), (["--K", "3"], "--K 3"), (["--cell", "lstm"], "--cell"),
    (["--data-path", "x"], "--data-path"), (["--binarize", "foo"], "--binarize"), (["--lr", "inf"], "--lr"),
    (["--seed", "99999999999999999999999"], "--seed"), (["--threads", "100000"], "--threads"),
])
def test_option_errors_name_the_option(tmp_path, capsys, args, text):
    assert _train("--out", str(tmp_path / "o"), "--epochs", "1", *args) == 2
    assert text in _error(capsys)


def test_output_paths_are_checked_before_the_work(run, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(run / "model.pt"), "--out", str(tmp_path / "s.jpg")]) == 2
    assert ".png" in _error(capsys)
    assert main(["eval", "--checkpoint", str(run), "--json", str(tmp_path)]) == 2
    assert "is a directory" in _error(capsys)
    assert capsys.readouterr().out == ""  # (no result printed before the error)
    assert main(["bench", "--quick", "--no-memory", "--family", "nade", "--filter", "cpp",
                 "--plot", str(tmp_path / "p.xyz")]) == 2
    assert ".png" in _error(capsys)


def test_unavailable_backend_is_not_called_a_broken_checkpoint(run, capsys):
    pytest.importorskip("armodel_fast")
    from armodel_fast import dispatch
    if dispatch._why_not("cuda", "fvsbn", __import__("torch").device("cpu")) is None:
        pytest.skip("cuda usable here")
    assert main(["sample", "--checkpoint", str(run / "model.pt"), "--backend", "cuda"]) == 2
    line = _error(capsys)
    assert line.startswith("error: --backend cuda") and "does not match" not in line


def test_the_run_folder_line_lists_what_was_written(tmp_path, capsys):
    out = tmp_path / "o"
    assert _train("--epochs", "1", "--eval-every", "1000", "--out", str(out)) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("run folder")][0]
    assert sorted(line.split(": ", 1)[1].split(", ")) == sorted(os.listdir(out))


def test_binary_data_may_be_declared_categorical_and_huge_labels_are_refused(tmp_path, capsys):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "bin.npy", (rng.random((60, 9)) < 0.5).astype(np.float32))
    assert main(["train", "--model", "categorical-nade", "--data", str(tmp_path / "bin.npy"), "--data-type",
                 "categorical", "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    np.save(tmp_path / "big.npy", rng.integers(0, 10 ** 6, (60, 9)))
    assert main(["train", "--model", "categorical-nade", "--data", str(tmp_path / "big.npy"), "--hidden", "8",
                 "--epochs", "1", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "classes" in _error(capsys)


def test_a_threshold_that_makes_the_data_constant_is_refused(tmp_path, capsys):
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "real.npy", np.random.default_rng(0).random((60, 9)).astype(np.float32))
    for t in ("-1", "5"):
        assert main(["train", "--data", str(tmp_path / "real.npy"), "--binarize", t, "--epochs", "1",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 2
        assert "makes every value" in _error(capsys)


def test_a_failed_first_run_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert _train("--out", str(out), "--data", str(tmp_path / "missing.npy")) == 2
    _error(capsys)
    assert not out.exists()


def test_a_best_checkpoint_of_another_model_is_one_error_line(run, tmp_path, capsys):
    import shutil
    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    other = tmp_path / "other"
    assert main(["train", "--model", "nade", "--epochs", "1", "--out", str(other), "--quiet"]) == 0
    shutil.copy(other / "best.pt", mixed / "best.pt")  # last.pt (the run's) resumes; best.pt is NADE's
    assert main(["train", "--resume", str(mixed), "--quiet"]) == 2  # (all epochs done: best.pt is read at once)
    assert "best.pt is not a checkpoint of this run's model" in _error(capsys)


def test_resuming_a_run_that_reached_max_steps_says_so(tmp_path, capsys):
    out = tmp_path / "ms"
    assert _train("--epochs", "3", "--max-steps", "5", "--out", str(out)) == 0
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "--max-steps 5" in _error(capsys)
    assert main(["train", "--resume", str(out), "--max-steps", "8", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["backend_ran"] == "reference" and metrics["eval_backend"] == "reference"
