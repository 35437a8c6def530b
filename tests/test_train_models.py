"""Every model and head trains from the command line on the data kind it takes, then evaluates."""
import json

import numpy as np
import pytest

from armodel_fast.cli import main
from armodel_fast.training import checkpoint as C

CASES = {
    "nade": ["--model", "nade"],
    "categorical-nade": ["--model", "categorical-nade", "--data-type", "categorical"],
    "rnade": ["--model", "rnade", "--K", "2", "--data-type", "real"],
    "fvsbn": ["--model", "fvsbn"],
    "made-bernoulli": ["--model", "made", "--direct", "--num-masks", "2"],
    "made-categorical": ["--model", "made", "--head", "categorical", "--data-type", "categorical"],
    "made-gaussian": ["--model", "made", "--head", "gaussian", "--K", "2", "--data-type", "real"],
    "arrnn": ["--model", "arrnn", "--cell", "gru"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_model_trains_and_evaluates(tmp_path, capsys, case):
    out = tmp_path / case
    rc = main(["train", *CASES[case], "--hidden", "8", "--max-steps", "3", "--eval-every", "3",
               "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    saved = C.load(out / "model.pt")
    assert saved["config"]["name"] == CASES[case][1]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["nll"]) and result["nll"] == pytest.approx(saved["metrics"]["valid_nll"])


def test_order_from_a_file(tmp_path):
    order = np.random.default_rng(0).permutation(64)
    np.savetxt(tmp_path / "order.txt", order, fmt="%d")
    assert main(["train", "--model", "nade", "--hidden", "8", "--order", str(tmp_path / "order.txt"),
                 "--max-steps", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    saved = C.load(tmp_path / "run" / "model.pt")
    assert saved["state_dict"]["order"].tolist() == order.tolist()


def test_recipe_options_and_command_line_override(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('paper_nll = 1.0\nmodel = "fvsbn"\noptimizer = "sgd"\nlr = 0.5\nmax_steps = 2\n')
    assert main(["train", "--recipe", str(recipe), "--lr", "0.1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    opts = C.load(tmp_path / "run" / "last.pt")["args"]
    assert (opts["model"], opts["optimizer"], opts["lr"], opts["max_steps"]) == ("fvsbn", "sgd", 0.1, 2)


def test_shipped_recipes_use_train_options_only(monkeypatch):
    from armodel_fast.training.commands import DEFAULTS
    from train_helpers import REPO
    monkeypatch.setenv("ARMODEL_FAST_RECIPES", str(REPO / "recipes"))  # also when the package is installed
    from armodel_fast.training.recipes import available, load_recipe
    names = available()
    assert {"fvsbn-mnist", "nade-mnist", "made-mnist", "made-mnist-fig2"} <= set(names)
    for name in names:
        assert set(load_recipe(name)) <= set(DEFAULTS), name
