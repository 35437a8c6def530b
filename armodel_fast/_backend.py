"""Old name of :mod:`armodel_fast.dispatch`, kept for the modules that still import it
(train.py, bench/rows.py, benchmarks/bench_made.py, benchmarks/bench_nade_variants.py);
new code imports ``armodel_fast.dispatch``."""
from .dispatch import (AUTO_ORDER, BACKENDS, BackendStatus, BackendUnavailableError,  # noqa: F401
                       _why_not, backends, check_backend, check_backend_name, explain, resolve_backend)
