"""Crash safety: SIGKILL at a random step, --resume, and the same parameters bit for bit;
damaged checkpoints are refused with their path named."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import armodel_fast as af
from armodel_fast.cli import main
from armodel_fast.training import checkpoint as C
from train_helpers import REPO, RUN_DIR, assert_bitwise_equal, cli, env, one_error_line, params

STEPS = 16
RUN = ["train", "--epochs", "2", "--max-steps", str(STEPS), "--batch-size", "100", "--checkpoint-every", "1",
       "--binarize", "dynamic", "--quiet", "--seed", "5", "--eval-every", "5"]
MODELS = {"made": ["--model", "made", "--hidden", "16", "16", "--num-masks", "3", "--order", "random"],
          "nade": ["--model", "nade", "--hidden", "16", "--optimizer", "sgd", "--momentum", "0.9",
                   "--schedule", "cosine"]}


def _step_of(run_dir) -> int:
    try:
        return C.load(run_dir / "last.pt")["trainer"]["step"]
    except C.CheckpointError:
        return -1


@pytest.mark.parametrize("backend,model", [("cpp", "made"), ("reference", "nade")])
def test_sigkill_then_resume_gives_bitwise_the_same_parameters(tmp_path, backend, model):
    if backend != "reference" and not af.backends()[backend].available:
        pytest.fail(f"{backend} unavailable: {af.backends()[backend].reason}")
    args = RUN + MODELS[model] + ["--backend", backend]
    cli(*args, "--out", tmp_path / "whole")
    kill_at = random.Random().randint(2, STEPS - 3)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "armodel_fast", *args, "--out", str(killed)], cwd=RUN_DIR,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and _step_of(killed) < kill_at and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before step {kill_at}"
    assert not (killed / "model.pt").exists()
    resumed = cli("train", "--resume", killed)
    assert "resumed at step" in resumed.stdout
    assert_bitwise_equal(params(tmp_path / "whole"), params(killed))
    whole = [line for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    again = [line for line in (killed / "metrics.jsonl").read_text().splitlines()]
    strip = (lambda lines: [{k: v for k, v in __import__("json").loads(x).items() if k != "seconds"} for x in lines])
    assert strip(whole) == strip(again)  # no record lost or written twice


def test_resume_with_another_model_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "fvsbn", "--max-steps", "2", "--out", str(run), "--quiet"]) == 0
    before = (run / "last.pt").read_bytes()
    rc = main(["train", "--resume", str(run), "--model", "nade"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--model fvsbn" in line and "--resume" in line
    assert (run / "last.pt").read_bytes() == before
    rc = main(["train", "--model", "fvsbn", "--max-steps", "2", "--out", str(run), "--quiet"])
    assert rc == 2 and "--resume" in one_error_line(capsys.readouterr().err)  # no silent overwrite
    assert (run / "last.pt").read_bytes() == before


def test_truncated_or_corrupt_checkpoints_name_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "fvsbn", "--max-steps", "2", "--out", str(run), "--quiet"]) == 0
    good = (run / "last.pt").read_bytes()
    for cut in (10, len(good) // 3, len(good) - 1):  # every truncation is refused
        (run / "last.pt").write_bytes(good[:cut])
        with pytest.raises(C.CheckpointError, match="last.pt"):
            C.load(run / "last.pt")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    (run / "last.pt").write_bytes(bytes(flipped))
    rc = main(["train", "--resume", str(run)])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(run / "last.pt") in line


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    C.save(path, {"v": torch.ones(3)})

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        C.save(path, {"v": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(C.load(path)["v"], torch.ones(3))
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


def test_a_write_that_fails_halfway_leaves_the_old_file(tmp_path, monkeypatch):
    """A write of the temporary file that fails part way (disk full) raises that OSError and leaves
    the old file whole and no temporary file behind."""
    path = tmp_path / "c.pt"
    C.save(path, {"v": torch.ones(3)})
    real_open = open

    class HalfFull:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 200:
                raise OSError(28, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr("builtins.open", lambda *a, **k: HalfFull(real_open(*a, **k)))
    with pytest.raises(OSError, match="No space"):
        C.save(path, {"v": torch.zeros(1000)})
    monkeypatch.undo()
    assert torch.equal(C.load(path)["v"], torch.ones(3))
    assert os.listdir(tmp_path) == ["c.pt"]


def test_overwrite_starts_afresh(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--model", "fvsbn", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["train", "--model", "fvsbn", "--max-steps", "2", "--eval-every", "2", "--out", str(run),
                 "--overwrite", "--quiet"]) == 0
    steps = [__import__("json").loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2] and C.load(run / "last.pt")["trainer"]["step"] == 2



@pytest.mark.parametrize("where", ["before the validation", "after its record"])
def test_killed_between_the_last_steps_checkpoint_and_its_validation(tmp_path, monkeypatch, where):
    """A run stopped by --max-steps saves its last step's checkpoint, then validates (a record
    in metrics.jsonl) and saves again. Killed in between, --resume must take no further step and
    leave that validation's record written once: the same parameters and metrics as the run
    never killed (the first window is what made the SIGKILL test above fail now and then)."""
    from armodel_fast.training import loop

    args = ["train", "--model", "made", "--hidden", "16", "16", "--num-masks", "3", "--order", "random",
            "--max-steps", "4", "--checkpoint-every", "1", "--eval-every", "3", "--quiet", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    name = "_validate_and_report" if where == "before the validation" else "save_last"
    real = getattr(loop.Trainer, name)

    def killed(self, *a):
        st = self.state
        if st["step"] == 4 and (name == "_validate_and_report" or st.get("last_eval_step") == 4):
            raise SystemExit("killed")
        return real(self, *a)

    monkeypatch.setattr(loop.Trainer, name, killed)
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "killed")])
    monkeypatch.undo()
    assert _step_of(tmp_path / "killed") == 4 and not (tmp_path / "killed" / "model.pt").exists()
    assert main(["train", "--resume", str(tmp_path / "killed"), "--quiet"]) == 0
    assert_bitwise_equal(params(tmp_path / "whole"), params(tmp_path / "killed"))
    strip = (lambda p: [{k: v for k, v in __import__("json").loads(x).items() if k != "seconds"}
                        for x in (p / "metrics.jsonl").read_text().splitlines()])
    assert strip(tmp_path / "killed") == strip(tmp_path / "whole")


def test_resume_refuses_optimizer_state_of_another_layout(tmp_path, capsys):
    """An optimizer state whose shapes do not fit the parameters (a checkpoint of an older model
    layout) is refused at --resume, not at the first step with a size error."""
    run = tmp_path / "run"
    assert main(["train", "--model", "fvsbn", "--max-steps", "2", "--out", str(run), "--quiet"]) == 0
    saved = C.load(run / "last.pt")
    state = saved["optimizer"]["state"]
    key = next(k for k, v in state.items() if v["exp_avg"].dim() == 2)
    state[key]["exp_avg"] = torch.cat([state[key]["exp_avg"]] * 2)
    C.save(run / "last.pt", saved)
    before = (run / "last.pt").read_bytes()
    rc = main(["train", "--resume", str(run), "--max-steps", "4"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "optimizer state 'exp_avg'" in line and "start a new run" in line
    assert (run / "last.pt").read_bytes() == before
