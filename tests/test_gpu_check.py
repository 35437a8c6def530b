"""benchmarks/gpu_check.sh: argument handling, the plan it prints, its offline package
install and its CPU-only paths (the GPU path itself runs on a GPU)."""
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
BUDGET_S = 8 * 60  # the whole check, on 16 cores and one H100/H200
STEPS = ["preflight", "build", "smoke", "gpu-tests", "bench", "tests"]


def run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_help_lists_the_options():
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--out", "--python", "--wheels", "--jobs", "--time-limit", "--skip-build", "--skip-tests",
                "--skip-bench", "--quick", "--bench-args", "--dry-run", "--rehearse"):
        assert opt in r.stdout, opt


@pytest.mark.parametrize("args, message", [(["--frobnicate"], "unknown argument"), (["--out"], "--out needs"),
                                           (["--jobs", "0"], "--jobs needs"), (["--jobs", "x2"], "--jobs needs"),
                                           (["--wheels"], "--wheels needs"),
                                           (["--time-limit", "5m"], "--time-limit needs")])
def test_bad_argument_exits_2(args, message):
    r = run(*args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_dry_run_lists_every_step(tmp_path):
    r = run("--dry-run", "--python", sys.executable, "--jobs", "16", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    steps = re.findall(r"^==> \[(\w[\w-]*)\]", r.stdout, flags=re.M)
    assert steps == STEPS
    build = next(line for line in r.stdout.splitlines() if "[build]" in line)
    assert "FORCE_CUDA=1" in build and "MAX_JOBS=16" in build and "build_ext --inplace" in build
    assert re.search(r"TORCH_CUDA_ARCH_LIST=\d+\.\d", build)  # one architecture, this GPU's
    gpu_tests = next(line for line in r.stdout.splitlines() if "[gpu-tests]" in line)
    assert " -m gpu " in gpu_tests and "ARMODEL_FAST_FAILURE_LOG=" in gpu_tests
    tests = next(line for line in r.stdout.splitlines() if "[tests]" in line)
    assert r"-m not\ slow\ and\ not\ gpu" in tests and "--junitxml" in tests  # quoted as for a shell
    assert "--ignore=tests/test_triton_aot.py" in tests  # compiles for sm_90 without a GPU: redundant here
    assert "-m armodel_fast.selfcheck" in next(line for line in r.stdout.splitlines() if "[smoke]" in line)
    bench = next(line for line in r.stdout.splitlines() if "[bench]" in line)
    assert "--device cuda" in bench and f"--out {tmp_path / 'o'}" in bench and "--quick" not in bench
    assert not (tmp_path / "o").exists()


def test_quick_dry_run_runs_the_gpu_tests_and_tiny_bench(tmp_path):
    r = run("--dry-run", "--quick", "--skip-build", "--bench-args", "--no-compile --repeats 3",
            "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "[build]" not in r.stdout and "[tests]" not in r.stdout  # quick: the gpu-marked tests only
    assert re.search(r"\[gpu-tests\].* -m gpu ", r.stdout)
    assert re.search(r"\[bench\].* --quick --no-compile --repeats 3 ", r.stdout)


def test_header_budget_fits_in_8_minutes():
    header = SCRIPT.read_text().split("set -uo pipefail")[0].replace("\n#", "")
    budget = re.search(r"Budget: " + r",? ".join(rf"{step} (\d+) s(?: \([^)]*\))?" for step in STEPS),
                       header)
    assert budget, "the header must give each step's time budget"
    assert sum(int(s) for s in budget.groups()) < BUDGET_S
    readme = (REPO / "README.md").read_text()
    table = [re.search(rf"^\| {step} \| (\d+) s \|", readme, flags=re.M) for step in STEPS]
    assert all(table), "README's GPU check section must give each step's budget"
    assert [m.group(1) for m in table] == list(budget.groups()), "README and script header disagree"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path needs a machine without a CUDA GPU")
def test_without_a_gpu_it_says_so_and_exits_3(tmp_path):
    r = run("--python", sys.executable, "--out", str(tmp_path / "o"))
    assert r.returncode == 3
    assert "no CUDA GPU" in r.stderr
    assert not (tmp_path / "o").exists()


def _stand_in_python(tmp_path, prelude: str, exec_prefix: str = ""):
    """A python for the script: the bash ``prelude`` sees each call first (it may answer it and
    exit), then this very python runs it, with ``exec_prefix`` (variable assignments) before it."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/usr/bin/env bash\n{prelude}\n{exec_prefix}exec {sys.executable} \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


# The smoke step's self-check passes: the tests of the script's other steps must not depend on
# the in-tree build matching the running torch (the wheel stages run them against another torch).
PASSING_SMOKE = 'case "$*" in *armodel_fast.selfcheck*) echo "self-check skipped in this test"; exit 0 ;; esac'


def _steps(out) -> list:
    """steps.tsv as [(step, rc), ...]."""
    rows = (line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:])
    return [(name, rc) for name, _, rc in rows]


def test_rehearsal_preflight_writes_the_device_and_step_files(tmp_path):
    out = tmp_path / "o"
    r = run("--rehearse", "--skip-build", "--skip-tests", "--skip-bench", "--python",
            str(_stand_in_python(tmp_path, PASSING_SMOKE)), "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"torch {torch.__version__}" in (out / "device.txt").read_text()
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert rows[0] == ["step", "seconds", "rc"] and rows[1][0] == "preflight" and rows[1][2] == "0"


def _fake_python(tmp_path, missing):
    """A python in which ``import <missing>`` fails and whose pip calls are logged, not run."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / f"{missing}.py").write_text(f"raise ImportError('{missing} is missing in this test')\n")
    pip_logged = f'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "$@" >> {tmp_path}/pip.log; exit 0; fi'
    shadowed = f"PYTHONPATH={shadow}${{PYTHONPATH:+:$PYTHONPATH}} "
    return _stand_in_python(tmp_path, f"{pip_logged}\n{PASSING_SMOKE}", exec_prefix=shadowed)


def test_missing_packages_are_installed_offline_from_the_wheels_folder(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake = _fake_python(tmp_path, "xdist")
    r = run("--rehearse", "--skip-build", "--skip-tests", "--skip-bench", "--python", str(fake),
            "--wheels", str(wheels), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stdout + r.stderr
    calls = (tmp_path / "pip.log").read_text().splitlines()
    assert calls == [f"-m pip install -q --no-index --find-links {wheels} pytest-xdist"]


def test_a_missing_needed_package_without_wheels_fails_the_preflight(tmp_path):
    fake = _fake_python(tmp_path, "rich")
    r = run("--rehearse", "--skip-build", "--skip-tests", "--skip-bench", "--python", str(fake),
            "--wheels", "", "--out", str(tmp_path / "o"))
    assert r.returncode == 1
    assert "missing: rich" in r.stdout and "make gpu-check-wheels" in r.stdout
    assert "FAILED: preflight" in r.stderr
    assert not (tmp_path / "pip.log").exists()


def test_a_crashing_smoke_check_fails_the_run_and_says_so(tmp_path):
    out = tmp_path / "o"
    env = {**__import__("os").environ, "GPU_CHECK_COMPILERS": "", "PATH": "/usr/bin:/bin"}
    crashing = _stand_in_python(tmp_path, 'case "$*" in *armodel_fast.selfcheck*) kill -SEGV $$ ;; esac')
    r = run("--rehearse", "--skip-build", "--skip-bench", "--python", str(crashing), "--out", str(out), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED: smoke" in r.stderr
    rows = dict(_steps(out))
    assert rows["smoke"] == str(128 + 11)  # the signal, as the shell reports it
    assert "gpu-tests" in rows  # these still run (collected, in a rehearsal) ...
    assert rows["tests"] == "skipped" and "C++ argument errors crash this build" in r.stdout  # ... these not


def test_the_smoke_check_passes_on_this_build():
    r = subprocess.run([sys.executable, "-m", "armodel_fast.selfcheck"], capture_output=True,
                       text=True, timeout=120)
    if "did not load" in r.stdout:
        pytest.skip("the C++ extension is not built")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: _C.check_order" in r.stdout


def test_a_spent_time_limit_skips_the_remaining_steps_and_fails(tmp_path):
    out = tmp_path / "o"
    # 3 s a call: the preflight's three calls (9 s or more) spend the 12 s limit, leaving <= 5 s, so the
    # steps after it are skipped; the preflight itself starts with >= 6 s left even if the script is
    # slow to start (SECONDS counts whole seconds: a limit of 6 was skipped from the start on a busy CI)
    slow = _stand_in_python(tmp_path, "sleep 3")
    r = run("--rehearse", "--skip-build", "--skip-bench", "--time-limit", "12", "--python", str(slow),
            "--out", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _steps(out)
    assert rows[0] == ("preflight", "0")  # run before the limit was spent
    assert [rc for _, rc in rows[1:]] == ["skipped"] * (len(rows) - 1) and len(rows) >= 3
    assert "the --time-limit of 12s is spent" in r.stdout and "FAILED: smoke(no-time)" in r.stderr


def test_a_step_past_the_time_limit_is_cut_off(tmp_path):
    out = tmp_path / "o"
    slow = _stand_in_python(tmp_path, 'case "$*" in *armodel_fast.selfcheck*) sleep 60 ;; esac')  # far past the limit
    r = run("--rehearse", "--skip-build", "--skip-tests", "--skip-bench", "--time-limit", "20", "--python", str(slow),
            "--out", str(out))
    rows = dict(_steps(out))
    assert rows["smoke"] == "124", rows
    assert r.returncode == 1


def test_a_crash_rebuilds_with_each_other_compiler_until_the_smoke_passes(tmp_path):
    """The default compiler's build crashes the smoke check: gpu_check tries the other
    compilers in turn (a stand-in python records which one built, and crashes unless 'good' did)."""
    bin_dir, mark = tmp_path / "bin", tmp_path / "built-with"
    bin_dir.mkdir()
    for name in ("bad", "good"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    fake = _stand_in_python(tmp_path, f"""case "$*" in
    *setup.py*) echo "${{CXX:-default}}" > {mark}; exit 0 ;;
    *armodel_fast.selfcheck*) case "$(cat {mark})" in */good) exit 0 ;; esac; kill -SEGV $$ ;;
esac""")
    out = tmp_path / "o"
    env = {**__import__("os").environ, "GPU_CHECK_COMPILERS": "bad good", "PATH": f"{bin_dir}:/usr/bin:/bin"}
    r = run("--rehearse", "--skip-tests", "--skip-bench", "--python", str(fake), "--out", str(out), env=env)
    assert _steps(out) == [
        ("preflight", "0"), ("build", "0"), ("smoke", "139"), ("build-1", "0"), ("smoke-1", "139"),
        ("build-2", "0"), ("smoke-2", "0")], r.stdout
    assert f"rebuilding with {bin_dir / 'good'}" in r.stdout
    assert r.returncode == 1 and "FAILED: smoke smoke-1" in r.stderr  # the default compiler's crash stays on record


def test_failures_are_logged_as_they_happen(tmp_path, monkeypatch):
    import conftest
    log = tmp_path / "failures.txt"
    monkeypatch.setenv("ARMODEL_FAST_FAILURE_LOG", str(log))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    report = lambda failed, nodeid: type("R", (), dict(failed=failed, nodeid=nodeid, when="call",  # noqa: E731
                                                       longreprtext="AssertionError: boom"))()
    conftest.pytest_runtest_logreport(report(False, "tests/t.py::passes"))
    conftest.pytest_runtest_logreport(report(True, "tests/t.py::fails"))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")  # a worker: the controller writes its reports
    conftest.pytest_runtest_logreport(report(True, "tests/t.py::in_a_worker"))
    assert log.read_text() == "=== tests/t.py::fails [call]\nAssertionError: boom\n\n"
