"""The loop's options: optimizers, schedules, clipping, early stopping, the best model kept."""
import json

import pytest
import torch

from armodel_fast.cli import main
from armodel_fast.training import checkpoint as C
from armodel_fast.training.datasets import load_dataset
from armodel_fast.training.loop import Settings, Trainer
from armodel_fast.training.models import build_model


@pytest.mark.parametrize("optimizer,schedule", [("adam", "cosine"), ("sgd", "plateau"), ("adagrad", "none")])
def test_optimizers_and_schedules_lower_the_nll(tmp_path, optimizer, schedule):
    data = load_dataset("digits")
    model = build_model("fvsbn", data.dim, backend="reference")
    s = Settings(epochs=3, lr=0.05 if optimizer != "adam" else 0.01, optimizer=optimizer, schedule=schedule,
                 momentum=0.9 if optimizer == "sgd" else 0.0, clip=5.0, weight_decay=1e-5)
    meta = {"config": {}, "image_shape": (8, 8), "data": {}, "args": {}}
    state = Trainer(model, data, s, str(tmp_path), meta).fit()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert state["epoch"] == 3 and len(recs) == 3
    assert recs[-1]["valid_nll"] < recs[0]["valid_nll"] < 64 * 0.7
    if schedule == "cosine":
        assert recs[-1]["lr"] < recs[0]["lr"] < 0.01


def test_early_stopping_keeps_the_best_model(tmp_path, capsys):
    # SGD at 1e-30 leaves float32 parameters unchanged: no validation improves on the first.
    rc = main(["train", "--model", "fvsbn", "--optimizer", "sgd", "--lr", "1e-30", "--eval-every", "2",
               "--patience", "2", "--epochs", "5", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert "early stopping" in capsys.readouterr().out
    best = C.load(tmp_path / "best.pt")
    assert best["metrics"]["step"] == 2
    final = C.load(tmp_path / "model.pt")
    for k, v in best["state_dict"].items():
        assert torch.equal(final["state_dict"][k], v)


@pytest.mark.parametrize("name,plain", [
    ("adam", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01)),
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=0.01)),
    ("adagrad", lambda p: torch.optim.Adagrad(p, lr=0.01, weight_decay=0.01))])
def test_optimizers_are_torchs_fused_ones_and_match_the_unfused_ones(name, plain):
    """--optimizer adam / sgd / adagrad build torch's fused optimizer (one pass per parameter) for CPU
    floating-point parameters; its steps equal the unfused one's to float tolerance."""
    from armodel_fast.training.loop import make_optimizer
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(a.parameters(), Settings(optimizer=name, lr=0.01, momentum=0.9, weight_decay=0.01))
    opt_b = plain(b.parameters())
    assert opt_a.defaults["fused"] is True and not opt_b.defaults["fused"]
    x = torch.randn(8, 5)
    for _ in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
