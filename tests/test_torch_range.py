"""The tested torch range is stated once (setup.py's TORCH_OLDEST / TORCH_BELOW) and
agrees with the build requirement, the Makefile's CI ends and what a wheel requires."""
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP_TAIL = "ext_modules, cmdclass = configure()"


@pytest.fixture
def setup_ns(monkeypatch):
    """setup.py's definitions, without running its setup() call."""
    source = (REPO / "setup.py").read_text()
    assert SETUP_TAIL in source
    ns = {"__file__": str(REPO / "setup.py"), "__name__": "setup_under_test"}
    exec(compile(source.split(SETUP_TAIL)[0], "setup.py", "exec"), ns)
    return ns


def _version(text):
    return tuple(int(p) for p in text.split(".")[:2])


def test_pyproject_build_requirement_is_the_range(setup_ns):
    pyproject = (REPO / "pyproject.toml").read_text()
    requires = re.search(r'^requires = \[(.*)\]', pyproject, flags=re.M).group(1)
    assert f'"torch{setup_ns["TORCH_RANGE"]}"' in requires
    assert setup_ns["TORCH_RANGE"] == ">={}.{},<{}.{}".format(*setup_ns["TORCH_OLDEST"], *setup_ns["TORCH_BELOW"])


def test_ci_tests_both_ends_of_the_range(setup_ns):
    out = subprocess.run(["make", "-s", "-C", str(REPO), "print-torch-range"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    oldest, newest = out.stdout.split()
    assert _version(oldest) == setup_ns["TORCH_OLDEST"]
    below = setup_ns["TORCH_BELOW"]
    assert _version(newest) == (below[0], below[1] - 1)  # the last minor release under the bound


def test_native_build_pins_its_torch_and_pure_python_takes_the_range(setup_ns, monkeypatch):
    import torch

    monkeypatch.delenv("ARMODEL_FAST_NO_EXT", raising=False)
    deps = setup_ns["install_requires"]()
    assert deps[0] == "torch==" + torch.__version__.split("+")[0]
    assert any(d.startswith("triton>=3.6;") for d in deps)
    monkeypatch.setenv("ARMODEL_FAST_NO_EXT", "1")
    assert setup_ns["install_requires"]()[0] == "torch" + setup_ns["TORCH_RANGE"]


@pytest.mark.parametrize("version, warns", [("2.10.2", True), ("2.11.0", False), ("2.14.1+cu130", False),
                                            ("2.15.0", True)])
def test_a_build_outside_the_range_warns(setup_ns, monkeypatch, capsys, version, warns):
    monkeypatch.setattr(sys, "argv", ["setup.py", "build_ext", "--inplace"])
    pin = setup_ns["torch_pin"](SimpleNamespace(__version__=version))
    assert pin == "torch==" + version.split("+")[0]
    assert ("outside the tested range" in capsys.readouterr().err) == warns
