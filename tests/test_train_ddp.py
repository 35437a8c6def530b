"""torchrun: 2 gloo CPU processes train the same parameters as 1 process with the same
global batch (within 1e-6), and a 2-process run resumes under torchrun."""
import pytest
import torch

import armodel_fast as af
from armodel_fast.training import checkpoint as C
from armodel_fast.training.models import build_model
from train_helpers import cli, params

TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "armodel_fast")
# MADE with 2 mask sets on the cpp backend: the custom ops under DDP, masks switched every step.
ARGS = ["train", "--model", "made", "--hidden", "16", "16", "--num-masks", "2", "--batch-size", "100",
        "--seed", "2", "--quiet", "--eval-every", "3"]


def test_two_gloo_processes_match_one_and_resume(tmp_path):
    backend = "cpp" if af.backends()["cpp"].available else "reference"
    args = ARGS + ["--backend", backend]
    cli(*args, "--max-steps", "6", "--out", tmp_path / "one")
    two = tmp_path / "two"
    first = cli(*args, "--max-steps", "3", "--out", two, prefix=TORCHRUN)
    assert "2 processes" in first.stdout
    resumed = cli("train", "--resume", two, "--max-steps", "6", prefix=TORCHRUN)
    assert "resumed at step 3" in resumed.stdout and "2 processes" in resumed.stdout
    a, b = params(tmp_path / "one", "last.pt"), params(two, "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k
    start = build_model(**C.load(two / "last.pt")["config"]).state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)  # not two untouched models
