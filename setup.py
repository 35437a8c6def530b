"""Build the native extensions of armodel-fast.

Metadata lives in pyproject.toml; this file only declares the extensions:

* ``armodel_fast._C``      every ``csrc/**/*.cpp`` except ``*_cuda.cpp`` (C++ CPU, OpenMP)
* ``armodel_fast._C_cuda`` every ``csrc/**/*.cu`` plus ``csrc/**/*_cuda.cpp``

Environment switches:

* ``ARMODEL_FAST_NO_EXT=1``  build no extension at all (pure Python install)
* ``FORCE_CUDA=1``           build ``_C_cuda`` even with no GPU visible; fail if impossible
* ``TORCH_CUDA_ARCH_LIST``   CUDA architectures (default "8.0;9.0")
* ``MAX_JOBS``               parallel compile jobs (ninja)

Sources are globbed recursively at build time (csrc/common, csrc/<op>/), so a new
file in csrc/ is picked up without editing this file; includes are relative to csrc/
(``#include "nade/nade_math.h"``). The torch version used for the build is recorded in
``armodel_fast/_build_info.py`` so that ``armodel_fast._ext`` can refuse to load
an extension built against another torch.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"
BUILD_INFO = ROOT / "armodel_fast" / "_build_info.py"
DEFAULT_ARCHS = "8.0;9.0"

# No -std for C++: torch's BuildExtension adds the standard its headers need
# (c++20 for torch 2.13; forcing c++17 warns in every torch header). The .cu
# files are torch-free and stay C++17, like `make cuda-check`.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-std=c++17"]
LINK_FLAGS = ["-fopenmp"]
MACROS = [("AF_WITH_OPENMP", None)]

# Commands that build something. pip also runs setup.py for metadata only
# (egg_info, dist_info): those neither print the summary nor write _build_info.py.
BUILD_COMMANDS = {"build", "build_ext", "build_py", "bdist_wheel", "editable_wheel", "develop", "install"}


def env_flag(name):
    return os.environ.get(name, "") == "1"


def sources(pattern, exclude_suffix=None):
    """Sorted paths under csrc/ (any depth) relative to the project root (setuptools wants relative paths)."""
    found = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / CSRC).rglob(pattern))
    if exclude_suffix:
        found = [p for p in found if not p.endswith(exclude_suffix)]
    return found


def find_cuda_home():
    """CUDA_HOME for torch, unless the environment sets it.

    torch takes the parent of the first `nvcc` on PATH, which is wrong when that
    nvcc is a wrapper script (e.g. /usr/local/bin/nvcc -> CUDA_HOME=/usr/local,
    with no CUDA headers there); prefer a directory that has bin/nvcc and headers.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return None
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [Path(nvcc).parent.parent, Path(os.path.realpath(nvcc)).parent.parent]
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


def cuda_include_dirs(torch):
    """CUDA headers shipped as wheels (torch 2.14.1+cu130: site-packages/nvidia/cu13/include).

    They go after the toolkit's own include dir: a toolkit may lack the library
    headers (cublas_v2.h, ...) that torch's CUDA headers include, while these
    wheels lack nvcc's crt/ headers, so both are needed, toolkit first.
    """
    candidates = [Path(torch.__file__).resolve().parent.parent]
    try:
        import site

        candidates += [Path(p) for p in site.getsitepackages()]
    except AttributeError:  # some virtualenvs lack getsitepackages
        pass
    dirs = []
    for base in candidates:
        inc = base / "nvidia" / "cu13" / "include"
        if inc.is_dir() and str(inc) not in dirs:
            dirs.append(str(inc))
    return dirs


def cpu_extension(cpp_ext):
    return cpp_ext.CppExtension(
        name="armodel_fast._C",
        sources=sources("*.cpp", exclude_suffix="_cuda.cpp"),
        include_dirs=[str(ROOT / CSRC)],
        define_macros=MACROS,
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=LINK_FLAGS,
    )


def cuda_extension(torch, cpp_ext):
    """Return (extension or None, reason it is not built)."""
    force = env_flag("FORCE_CUDA")
    cu_sources = sources("*.cu")
    if not cu_sources:
        return None, "no csrc/**/*.cu files yet"

    problem = None
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} has no CUDA"
    elif cpp_ext.CUDA_HOME is None:
        problem = "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    elif not (Path(cpp_ext.CUDA_HOME) / "bin" / "nvcc").exists():
        problem = f"nvcc not found under CUDA_HOME={cpp_ext.CUDA_HOME}"
    if problem:
        if force:
            sys.exit(f"armodel-fast: FORCE_CUDA=1 but cannot build _C_cuda: {problem}")
        return None, problem

    # torch reads the arch list from the environment; without a GPU it would guess.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    all_sources = cu_sources + sources("*_cuda.cpp")
    stems = [Path(p).stem for p in all_sources]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:  # ninja would refuse: two rules writing the same <stem>.o
        sys.exit(f"armodel-fast: csrc sources share an object name: {clashes}; rename one of each pair")
    ext = cpp_ext.CUDAExtension(
        name="armodel_fast._C_cuda",
        sources=all_sources,
        include_dirs=[str(ROOT / CSRC)],
        define_macros=MACROS,
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
        extra_link_args=LINK_FLAGS,
    )
    # CUDAExtension has appended torch's and CUDA_HOME's include dirs; these come last.
    ext.include_dirs.extend(d for d in cuda_include_dirs(torch) if d not in ext.include_dirs)
    return ext, None


def write_build_info(path, torch_version, not_built):
    """Record the torch we build against; rewritten only when it changes."""
    lines = [
        '"""Written by setup.py at build time; do not edit or commit."""',
        "",
        f"TORCH_VERSION = {torch_version!r}",
        f"NOT_BUILT = {dict(sorted(not_built.items()))!r}",
        "",
    ]
    text = "\n".join(lines)
    path = Path(path)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def configure():
    """Return (ext_modules, cmdclass) and print what will be built."""
    building = bool(BUILD_COMMANDS.intersection(sys.argv[1:]))
    if env_flag("ARMODEL_FAST_NO_EXT"):
        reason = "disabled by ARMODEL_FAST_NO_EXT=1 at build time"
        if building:
            print(f"armodel-fast: building no extensions: {reason}", file=sys.stderr)
            write_build_info(BUILD_INFO, None, {"_C": reason, "_C_cuda": reason})
        return [], {}

    import torch

    cuda_home = find_cuda_home()
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home  # read when cpp_extension is first imported
    from torch.utils import cpp_extension as cpp_ext

    ext_modules = [cpu_extension(cpp_ext)]
    cuda_ext, cuda_reason = cuda_extension(torch, cpp_ext)
    if cuda_ext is not None:
        ext_modules.append(cuda_ext)
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        summary = (
            f"building _C (CPU) and _C_cuda (CUDA {torch.version.cuda}, archs {archs}, "
            f"CUDA_HOME={cpp_ext.CUDA_HOME})"
        )
    else:
        summary = f"building _C (CPU); not building _C_cuda: {cuda_reason}"
    if building:
        print(f"armodel-fast: {summary}", file=sys.stderr)

    not_built = {} if cuda_ext else {"_C_cuda": cuda_reason}
    return ext_modules, {"build_ext": build_ext_class(cpp_ext, torch.__version__, not_built)}


def build_ext_class(cpp_ext, torch_version, not_built):
    class BuildExt(cpp_ext.BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            # `pip install -e .` builds in a fresh temp dir each time, so ninja would
            # recompile every file; keep the objects in the tree to rebuild only what changed.
            if self.in_tree():
                self.build_temp = str(ROOT / "build" / "temp-in-tree")

        def in_tree(self):
            return bool(self.inplace or getattr(self, "editable_mode", False))

        def run(self):
            super().run()
            # Only after a successful build: a failed rebuild must not vouch for an old .so.
            target = BUILD_INFO if self.in_tree() else Path(self.build_lib) / "armodel_fast" / BUILD_INFO.name
            write_build_info(target, torch_version, not_built)

    return BuildExt.with_options(use_ninja=True)


# The torch releases this package is tested with: CI builds it from source and runs
# the CPU tests against both ends (`make test-torch TORCH=2.11.0`, the CUDA wheel on
# 2.14.1). A source build takes any torch in the range; a built wheel pins the one it
# was compiled against, since the extensions link torch's C++ ABI, which changes
# between releases (armodel_fast/_ext.py refuses a build for another torch).
TORCH_OLDEST = (2, 11)  # inclusive
TORCH_BELOW = (2, 15)   # exclusive: 2.14.x is the newest tested
TORCH_RANGE = ">={},<{}".format(*(".".join(map(str, v)) for v in (TORCH_OLDEST, TORCH_BELOW)))
TRITON_OLDEST = "3.6"   # what torch 2.11 pulls; the Triton kernels are tested with it


def torch_pin(torch):
    """``torch==X`` for the running torch; warns at build time when X is outside TORCH_RANGE."""
    from torch.torch_version import TorchVersion

    version = torch.__version__.split("+")[0]
    building = bool(BUILD_COMMANDS.intersection(sys.argv[1:]))
    if building and not TORCH_OLDEST <= TorchVersion(version) < TORCH_BELOW:
        print(f"armodel-fast: WARNING: building against torch {version}, outside the tested "
              f"range torch{TORCH_RANGE}", file=sys.stderr)
    return "torch==" + version


def install_requires():
    """Runtime dependencies. A build with native code pins the torch it was compiled
    against (see TORCH_RANGE); a pure-Python build (ARMODEL_FAST_NO_EXT=1) takes the range."""
    deps = ["numpy", "scikit-learn", "matplotlib", "rich", f'triton>={TRITON_OLDEST}; platform_system == "Linux"']
    torch_req = "torch" + TORCH_RANGE
    if not env_flag("ARMODEL_FAST_NO_EXT"):
        try:
            import torch

            torch_req = torch_pin(torch)
        except ImportError:
            pass
    return [torch_req] + deps


ext_modules, cmdclass = configure()
setup(ext_modules=ext_modules, cmdclass=cmdclass, install_requires=install_requires())
