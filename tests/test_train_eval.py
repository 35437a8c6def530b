"""armodel-fast eval: NLL with a confidence interval, bits/dim, MADE mask ensembles, JSON."""
import json
import math

import numpy as np
import pytest
import torch

from armodel_fast.cli import main
from armodel_fast.training.commands import load_model
from armodel_fast.training.datasets import load_dataset
from armodel_fast.training.loop import split_nll
from train_helpers import one_error_line


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("made")
    assert main(["train", "--model", "made", "--hidden", "16", "--num-masks", "4", "--order", "random",
                 "--epochs", "1", "--backend", "reference", "--out", str(out), "--quiet"]) == 0
    return out


def test_eval_json_with_confidence_interval_and_ensemble(made_run, tmp_path, capsys):
    results = {}
    for k in (1, 4):
        path = tmp_path / f"e{k}.json"
        assert main(["eval", "--checkpoint", str(made_run), "--ensemble", str(k), "--json", str(path)]) == 0
        results[k] = json.loads(path.read_text())
        assert json.loads(capsys.readouterr().out) == results[k]
    one, four = results[1], results[4]
    assert one["n"] == 300 and one["split"] == "valid" and four["ensemble"] == 4
    lo, hi = one["nll_ci95"]
    assert lo < one["nll"] < hi
    assert one["bits_per_dim"] == pytest.approx(one["nll"] / (64 * math.log(2)))
    # Against the model's own per-mask NLLs: the log-mean-exp of 4 masks' probabilities.
    model, _ = load_model(str(made_run / "model.pt"), backend="reference")
    data = load_dataset("digits")
    per_mask = []
    for m in range(4):
        model.set_mask(m)
        per_mask.append(-split_nll(model, data, "valid"))
    lme = np.log(np.mean(np.exp(np.stack(per_mask)), axis=0))
    assert four["nll"] == pytest.approx(float(-lme.mean()), rel=1e-5)
    assert four["nll"] <= float(np.mean([-p.mean() for p in per_mask])) + 1e-9  # Jensen


def test_eval_errors(made_run, tmp_path, capsys):
    rc = main(["eval", "--checkpoint", str(made_run), "--ensemble", "9"])
    assert rc == 2 and "--ensemble 9" in one_error_line(capsys.readouterr().err)
    rc = main(["eval", "--checkpoint", str(tmp_path / "none.pt")])
    assert rc == 2 and "none.pt" in one_error_line(capsys.readouterr().err)
    np.save(tmp_path / "wide.npy", np.zeros((20, 10), np.float32))
    rc = main(["eval", "--checkpoint", str(made_run), "--data", str(tmp_path / "wide.npy")])
    assert rc == 2 and "D=10" in one_error_line(capsys.readouterr().err)
