#!/usr/bin/env bash
# One-command GPU verification (issues 6, 15) for a short rental: one NVIDIA GPU
# (H100/H200), 16 cores, its own python3 with torch+CUDA, Triton and nvcc, no internet.
# Builds the extensions in place for this GPU's architecture only, checks that they
# load and that a C++ argument error comes back as an exception (else: a native
# backtrace, and a rebuild with another compiler), runs the gpu-marked tests (every
# Triton and CUDA op against the reference on CUDA tensors: values, gradients, samples
# from the same uniforms), the benchmark table, then the rest of the suite (its Triton
# tests on CUDA tensors too). Everything lands in one folder: logs, junit XML,
# failures.txt (each failure as it happens), bench.json/.md/.png, profile.txt (one
# call of each kernel row under torch.profiler: host vs GPU time, host-device waits), steps.tsv.
#
#   benchmarks/gpu_check.sh [--out DIR] [--python PY] [--wheels DIR] [--jobs N] [--time-limit S]
#                           [--skip-build] [--skip-tests] [--skip-bench] [--quick]
#                           [--bench-args "ARGS"] [--dry-run] [--rehearse]
#
#   --wheels DIR   pip wheels to install missing test/bench packages from, offline
#                  (default gpu-check-wheels/ if present, '' for none; `make gpu-check-wheels`)
#   --quick        only the `gpu`-marked tests, tiny bench sizes (a smoke test)
#   --time-limit S the whole check within S seconds (a lease): each step gets what is
#                  left, a step cut off exits 124, the steps after it are skipped
#   --bench-args   extra bench options (default "--no-memory": every row in one process,
#                  no per-row subprocess; "" measures peak memory, ~3 s more per row)
#   --rehearse     no GPU needed: the CPU-side steps, timed (build without CUDA,
#                  test collection, bench --quick on the CPU)
#   --dry-run      print the steps, run nothing
#
# Time budget on 16 cores + one H100/H200 (total under 8 min; steps.tsv records the
# real ones). Measured on the first run (H100, 2026-12-05, before the smoke step
# existed): preflight 7 s, build 88 s, bench 55 s; the tests were cut off by the lease.
# Budget: preflight 10 s, build 90 s (sm_90 only, all cores), smoke 5 s, gpu-tests
# 150 s (pytest-xdist, one worker per 2 cores), bench 90 s (headline sizes), tests
# 120 s (the rest of the suite; cut short, it loses the least).
# Exit codes: 0 all passed; 1 a step failed; 2 bad arguments; 3 no CUDA GPU here.
set -uo pipefail

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

LAST_RC=0 LIMIT="" OUT="" PY="${PYTHON:-python3}" WHEELS=- JOBS="" BUILD=1 TESTS=1 BENCH=1 QUICK=0 DRY=0 REHEARSE=0
BENCH_ARGS="--no-memory"
need_value() { [ "$2" -ge 2 ] || { echo "gpu_check: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) need_value "$1" $#; OUT=$2; shift 2 ;;
        --python) need_value "$1" $#; PY=$2; shift 2 ;;
        --wheels) need_value "$1" $#; WHEELS=$2; shift 2 ;;
        --jobs) need_value "$1" $#; JOBS=$2; shift 2 ;;
        --time-limit) need_value "$1" $#; LIMIT=$2; shift 2 ;;
        --bench-args) need_value "$1" $#; BENCH_ARGS=$2; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        --skip-tests) TESTS=0; shift ;;
        --skip-bench) BENCH=0; shift ;;
        --quick) QUICK=1; shift ;;
        --dry-run) DRY=1; shift ;;
        --rehearse) REHEARSE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$JOBS" in ""|*[!0-9]*|0) [ -z "$JOBS" ] || { echo "gpu_check: --jobs needs a positive integer" >&2; exit 2; } ;; esac
case "$LIMIT" in ""|*[!0-9]*|0) [ -z "$LIMIT" ] || { echo "gpu_check: --time-limit needs a positive number of seconds" >&2; exit 2; } ;; esac

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT=${OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}
if [ "$WHEELS" = - ]; then WHEELS=""; [ -d gpu-check-wheels ] && WHEELS=gpu-check-wheels; fi
JOBS=${JOBS:-$(nproc)}
WORKERS=$(( JOBS / 2 > 0 ? JOBS / 2 : 1 ))
FAILED=()
START=$SECONDS

run() {  # run NAME CMD... : log to $OUT/NAME.log, time it, remember failures
    local name=$1; shift
    echo "==> [$name] $(printf '%q ' "$@")"  # as it could be pasted into a shell
    [ "$DRY" = 1 ] && return 0
    local t0=$SECONDS limit=()
    if [ -n "$LIMIT" ]; then  # what is left of --time-limit; a step cut off exits 124
        local left=$(( LIMIT - (SECONDS - START) ))
        if [ "$left" -le 5 ]; then
            echo "==> [$name] skipped: the --time-limit of ${LIMIT}s is spent"
            printf '%s\t0\tskipped\n' "$name" >> "$OUT/steps.tsv"; FAILED+=("$name(no-time)"); LAST_RC=124
            return 0
        fi
        [ "$(type -t "$1")" = function ] || limit=(timeout -k 5 "$left")  # (the preflight: not cut)
    fi
    "${limit[@]}" "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    wait $! 2>/dev/null  # tee has written the whole log
    LAST_RC=$rc
    echo "==> [$name] rc=$rc in $(( SECONDS - t0 ))s (total $(( SECONDS - START ))s)"
    printf '%s\t%s\t%s\n' "$name" "$(( SECONDS - t0 ))" "$rc" >> "$OUT/steps.tsv"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
}

if [ "$DRY" = 0 ] && [ "$REHEARSE" = 0 ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "gpu_check: no CUDA GPU is visible to torch ($PY); nothing to verify here." >&2
        echo "gpu_check: run it on a machine with an NVIDIA GPU, torch with CUDA, Triton and nvcc" \
             "(or --rehearse to time the CPU-side steps)." >&2
        exit 3
    fi
fi
if [ "$DRY" = 0 ]; then
    mkdir -p "$OUT"
    printf 'step\tseconds\trc\n' > "$OUT/steps.tsv"
fi

# ---- preflight: the device, and the Python packages the tests and the bench need ----
export TRITON_CACHE_DIR="$PWD/.cache/triton" TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, not an installed copy
if [ "$REHEARSE" = 0 ]; then
    unset TRITON_INTERPRET  # real GPU kernels, not the interpreter
    ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)
    DEVICE=cuda
else
    ARCH=none DEVICE=cpu
fi
# module:distribution. Needed: the first five (tests, bench table and plot); optional:
# xdist (else the tests run serially) and sklearn (the digits data set's tests).
PACKAGES="pytest:pytest hypothesis:hypothesis numpy:numpy rich:rich matplotlib:matplotlib
          xdist:pytest-xdist sklearn:scikit-learn"
preflight() {
    { nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"; "$PY" -c "import sys, torch, triton; \
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__); print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
      echo "arch $ARCH, $JOBS jobs, nvcc: $(command -v nvcc || echo none)"; } > "$OUT/device.txt" 2>&1
    cat "$OUT/device.txt"
    local missing=() dist
    # shellcheck disable=SC2207  # distribution names have no spaces
    missing=($("$PY" -c "import importlib, sys
for pair in sys.argv[1:]:
    module, dist = pair.split(':')
    try:
        importlib.import_module(module)
    except ImportError:
        print(dist)" $PACKAGES))
    if [ "${#missing[@]}" -gt 0 ] && [ -n "$WHEELS" ]; then
        echo "installing from $WHEELS, offline: ${missing[*]}"
        for dist in "${missing[@]}"; do  # one at a time: an absent optional one must not block the rest
            "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$dist" || echo "not installed: $dist" >&2
        done
    elif [ "${#missing[@]}" -gt 0 ]; then
        echo "missing: ${missing[*]} (no --wheels folder)" >&2
    fi
    "$PY" -c "import pytest, hypothesis, numpy, rich, matplotlib" || {
        echo "gpu_check: a needed package is missing: run 'make gpu-check-wheels' on a machine with" \
             "internet and carry gpu-check-wheels/ here (--wheels DIR)" >&2; return 1; }
}
run preflight preflight

build_command() {  # CMD=the build, with C++ compiler $1 (default: torch's), which hosts nvcc too
    CMD=(env)
    [ -n "${1:-}" ] && CMD+=(CXX="$1" CC="$1")
    if [ "$REHEARSE" = 0 ]; then  # this GPU's architecture only, every core
        CMD+=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" "$PY" setup.py build_ext --inplace)
    else  # the CPU extension as on the GPU machine (a CPU torch cannot build the CUDA one)
        CMD+=(MAX_JOBS="$JOBS" "$PY" setup.py build_ext --inplace)
    fi
}
# The extensions load and a C++ argument error comes back as a Python exception, in a
# process of its own (python -m armodel_fast.selfcheck): a crash there would take the test
# workers down one by one (as on the first GPU run). After a crash (rc > 128): a native
# backtrace (cuda-gdb debugs host code too) and, when building, a rebuild with each
# other compiler found until the smoke passes (GPU_CHECK_COMPILERS overrides the list).
# If it still crashes, the gpu-marked tests run (none of them crashed there) and the
# rest of the suite, where the C++ argument-error tests are, is skipped and named.
SMOKE=("$PY" -X faulthandler -m armodel_fast.selfcheck)
other_compilers() {  # the candidates that are not the same file as the default or each other
    local c path seen=("$(command -v "${CXX:-c++}")")
    for c in ${GPU_CHECK_COMPILERS-/usr/bin/g++ /usr/bin/c++ g++ clang++}; do
        path=$(command -v "$c") || continue
        for s in "${seen[@]}"; do [ -n "$s" ] && [ "$path" -ef "$s" ] && continue 2; done
        seen+=("$path"); echo "$path"
    done
}
if [ "$BUILD" = 1 ]; then
    build_command; run build "${CMD[@]}"
fi
run smoke "${SMOKE[@]}"
SMOKE_CRASHED=0
if [ "$DRY" = 0 ] && [ "$LAST_RC" -gt 128 ]; then
    SMOKE_CRASHED=1
    if command -v cuda-gdb >/dev/null; then
        run backtrace cuda-gdb -q -batch -ex run -ex bt --args "${SMOKE[@]}"
    fi
    n=0
    for cxx in $([ "$BUILD" = 1 ] && other_compilers); do  # ninja rebuilds what the new compiler changes
        n=$(( n + 1 )); echo "gpu_check: rebuilding with $cxx"
        build_command "$cxx"; run "build-$n" "${CMD[@]}"
        run "smoke-$n" "${SMOKE[@]}"
        [ "$LAST_RC" -eq 0 ] && { SMOKE_CRASHED=0; break; }
        [ "$LAST_RC" -eq 124 ] && break  # the time limit is spent
    done
fi
if [ "$DRY" = 0 ] && { [ -z "$LIMIT" ] || [ $(( LIMIT - (SECONDS - START) )) -gt 5 ]; }; then
    "$PY" -c "import armodel_fast as af; [print(' ', s) for s in af.backends().values()]" > "$OUT/backends.txt" 2>&1
    cat "$OUT/backends.txt"
fi

# pytest: each failure into failures.txt as it happens (tests/conftest.py), a per-test
# limit where pytest-timeout is installed, xdist workers where pytest-xdist is.
pytest_run() {  # pytest_run NAME SELECTION...
    local name=$1; shift
    if [ "$REHEARSE" = 1 ]; then
        run "$name" "$PY" -m pytest -qq -p no:cacheprovider "$@" --collect-only tests
        return
    fi
    # Left out: the no-GPU stand-ins that compile every kernel for sm_90 (minutes of CPU;
    # the build and the Triton tests compile the same code for this very GPU).
    run "$name" env ARMODEL_FAST_FAILURE_LOG="$OUT/failures.txt" "$PY" -m pytest -q -p no:cacheprovider -rs \
        "$@" "${xdist[@]}" "${per_test[@]}" --ignore=tests/test_triton_aot.py \
        --ignore=tests/test_cuda_sources.py --junitxml="$OUT/$name.xml" tests
    # A GPU test skipped for want of a GPU, on a GPU machine, is a failure too.
    [ "$DRY" = 1 ] || [ ! -f "$OUT/$name.log" ] || ! grep -E "SKIPPED.*(needs a CUDA GPU|no CUDA GPU)" "$OUT/$name.log" \
        || { echo "gpu_check: GPU tests were skipped on a GPU machine" >&2; FAILED+=("$name-skipped"); }
}
xdist=() per_test=()
if [ "$TESTS" = 1 ] && [ "$DRY" = 0 ]; then
    if [ "$WORKERS" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then xdist=(-n "$WORKERS"); fi
    "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=180)
fi
[ "$TESTS" = 1 ] && pytest_run gpu-tests -m gpu  # the Triton and CUDA backends against the reference

if [ "$BENCH" = 1 ]; then
    sizes=(); [ "$QUICK" = 1 ] || [ "$REHEARSE" = 1 ] && sizes=(--quick)
    # shellcheck disable=SC2086  # BENCH_ARGS is split into options on purpose
    run bench "$PY" -m armodel_fast bench --device "$DEVICE" "${sizes[@]}" $BENCH_ARGS --profile --out "$OUT"
fi

# The rest of the suite last (the Triton tests run their kernels on CUDA tensors whenever
# a GPU is visible): cut short, a rental loses the least.
if [ "$TESTS" = 1 ] && [ "$QUICK" = 0 ] && [ "$SMOKE_CRASHED" = 1 ]; then
    echo "==> [tests] skipped: C++ argument errors crash this build (see smoke.log, backtrace.log)"
    printf 'tests\t0\tskipped\n' >> "$OUT/steps.tsv"; FAILED+=("tests(smoke-crash)")
elif [ "$TESTS" = 1 ] && [ "$QUICK" = 0 ]; then
    pytest_run tests -m "not slow and not gpu"
fi

if [ "$DRY" = 1 ]; then echo "gpu_check: dry run, nothing executed"; exit 0; fi
echo "gpu_check: $(( SECONDS - START ))s in all; per step in $OUT/steps.tsv"
[ $(( SECONDS - START )) -le 480 ] || echo "gpu_check: over the 8-minute budget (see --quick, --bench-args)" >&2
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: FAILED: ${FAILED[*]} (logs in $OUT/)" >&2
    exit 1
fi
echo "gpu_check: all steps passed; results in $OUT/"
