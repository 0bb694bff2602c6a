"""Builds qsnn_kernels._C: the CPU kernels always, the CUDA kernels when a toolkit is found.

QSNN_CUDA=1 forces the CUDA part (an error if no toolkit), QSNN_CUDA=0 skips it, unset means
"when a toolkit is found". CUDA_HOME names the toolkit; if unset, the real toolkit folder is
looked up (an `nvcc` on PATH may be a wrapper outside it). TORCH_CUDA_ARCH_LIST picks the GPU
architectures (default 9.0, Hopper). MAX_JOBS bounds the parallel compile.
"""

import glob
import os
import shutil

from setuptools import find_packages, setup


def find_cuda_home():
    """The first folder that holds a real CUDA toolkit (bin/nvcc and include/cuda_runtime.h)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in filter(None, candidates):
        if os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            return home
    return None


cuda_mode = os.environ.get("QSNN_CUDA", "auto").lower()
if cuda_mode not in ("0", "1", "auto"):
    raise SystemExit(f"QSNN_CUDA must be 0, 1 or auto, got {cuda_mode!r}")
cuda_home = find_cuda_home() if cuda_mode != "0" else None
if cuda_mode == "1" and cuda_home is None:
    raise SystemExit("QSNN_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit folder")
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
sources = sorted(glob.glob("csrc/*.cpp"))
if cuda_home:
    arch = os.environ["TORCH_CUDA_ARCH_LIST"]
    extension = CUDAExtension(
        "qsnn_kernels._C",
        sources + sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=[("QSNN_WITH_CUDA", None), ("QSNN_CUDA_ARCH", f'"{arch}"')],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
        extra_link_args=["-fopenmp"],
    )
else:
    extension = CppExtension(
        "qsnn_kernels._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
    )

setup(
    packages=find_packages(include=["qsnn_kernels", "qsnn_kernels.*"], exclude=["qsnn_kernels.models*"])
    + ["qsnn_kernels.models", "qsnn_kernels._hls"],
    # models/ and hls/ are top-level folders of the repo, installed inside the package
    package_dir={"qsnn_kernels.models": "models", "qsnn_kernels._hls": "hls"},
    package_data={"qsnn_kernels._hls": ["Makefile", "README.md", "*/*.h", "*/*.cpp", "*/*.tcl"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
)
