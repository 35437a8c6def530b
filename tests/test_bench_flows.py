"""The ``flows`` bench family's rows: which peer rows run, which are skipped and why."""
import importlib.util

import pytest

from armodel_fast.bench.cases_flows import PEER_SAMPLE_FLOP_LIMIT, SIZES, _flow, flows_rows, peer_sample_flops
from armodel_fast.bench.core import BenchConfig

needs_pyro = pytest.mark.skipif(importlib.util.find_spec("pyro") is None, reason="pyro is not installed")


def _rows(size):
    return {(r.op, r.provider): r for r in flows_rows(BenchConfig(), size)}


@needs_pyro
def test_pyro_below_d_is_skipped_with_its_reason_and_ours_with_it():
    rows = _rows(_flow(20, 16, 4, 8))
    for op in ("MAF x5 train step", "MAF x5 sample n=4", "MAF x5 rsample n=4"):
        peer, ours = rows[(op, "pyro")], rows[(op, "armodel_fast.flows.pyro")]
        assert "refuses hidden sizes below D=20" in peer.skip
        assert ours.skip.startswith("nothing to compare with") and "refuses" in ours.skip
        for lib in ("zuko", "nflows"):  # the other libraries build any width
            if importlib.util.find_spec(lib) is not None:
                assert rows[(op, lib)].skip is None


@needs_pyro
def test_pyro_at_or_above_d_runs():
    rows = _rows(_flow(8, 8, 4, 8))
    assert all(r.skip is None for (op, prov), r in rows.items() if "pyro" in prov)


def test_every_headline_d_has_a_case_pyro_can_build():
    """The issue's D=784 comparison needs pyro too: some headline case at each D has hidden >= D
    and a peer sampling cost under the bench's limit."""
    cases = SIZES["flows"]["headline"]
    for D in {s["D"] for s in cases}:
        ok = [s for s in cases
              if s["D"] == D and min(s["hidden"]) >= D and peer_sample_flops(s) <= PEER_SAMPLE_FLOP_LIMIT]
        assert ok, f"no headline case at D={D} that pyro can build and sample within the limit"


def test_peer_rsample_is_skipped_where_its_saved_passes_exceed_memory(monkeypatch):
    import armodel_fast.bench.cases_flows as cf

    if not any(importlib.util.find_spec(lib) for lib in ("zuko", "nflows", "pyro")):
        pytest.skip("none of zuko, nflows, pyro is installed")
    size = _flow(784, 1024, 16)
    monkeypatch.setattr(cf, "_memory_bytes", lambda: 24 * 2**30)
    rows = _rows(size)
    for lib in ("zuko", "nflows", "pyro"):
        if importlib.util.find_spec(lib) is None:
            continue
        assert "masked weights of all 5 x 784 passes: ~54 GB" in rows[("MAF x5 rsample n=16", lib)].skip
        assert rows[("MAF x5 rsample n=16", f"armodel_fast.flows.{lib}")].skip.startswith("nothing to compare with")
        assert rows[("MAF x5 sample n=16", lib)].skip is None  # 434 GFLOP: under the limit
    monkeypatch.setattr(cf, "_memory_bytes", lambda: 256 * 2**30)
    assert all(r.skip is None for (op, prov), r in _rows(size).items()
               if "rsample" in op and importlib.util.find_spec(prov.split(".")[-1]) is not None)


def test_memory_is_the_container_limit_where_lower(monkeypatch, tmp_path):
    import armodel_fast.bench.cases_flows as cf

    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(cf, "_CGROUP_LIMITS", (str(v2), str(v1)))
    machine = cf._memory_bytes()  # neither file exists: the machine's memory
    assert 0 < machine < float("inf")
    v2.write_text("max\n")  # cgroup v2 without a limit
    assert cf._memory_bytes() == machine
    v1.write_text(f"{2**30}\n")
    assert cf._memory_bytes() == 2**30
    v2.write_text(f"{2**29}\n")
    assert cf._memory_bytes() == 2**29
