"""Named training recipes: ``recipes/NAME.toml`` files of ``train`` options.

A recipe is a flat TOML table whose keys are the long option names of
``armodel-fast train`` with ``_`` for ``-`` (``batch_size = 100``), plus
``paper_nll`` / ``paper`` (what the row reproduces; informational). Options on
the command line win over the recipe.
"""
from __future__ import annotations

import os
import tomllib

INFO_KEYS = ("paper", "paper_nll", "note")


def recipe_dirs() -> list:
    """Where ``--recipe NAME`` looks: $ARMODEL_FAST_RECIPES, then the repository's recipes/."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dirs = [os.environ.get("ARMODEL_FAST_RECIPES"), os.path.join(here, "recipes")]
    return [d for d in dirs if d and os.path.isdir(d)]


def available() -> list:
    return sorted({f[:-5] for d in recipe_dirs() for f in os.listdir(d) if f.endswith(".toml")})


def load_recipe(name: str) -> dict:
    """The options of recipe ``name`` (a name from :func:`available` or a .toml path)."""
    path = name if name.endswith(".toml") else next(
        (os.path.join(d, name + ".toml") for d in recipe_dirs() if os.path.isfile(os.path.join(d, name + ".toml"))),
        None)
    if path is None or not os.path.isfile(path):
        raise ValueError(f"--recipe {name}: no such recipe; choose one of {available()} or give a .toml path")
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--recipe {path}: not valid TOML ({e})") from None
    return {k: v for k, v in table.items() if k not in INFO_KEYS}
