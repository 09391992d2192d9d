"""Build of symnmf-kernels: the Python packages and the symnmf_kernels._C extension.

Metadata lives in pyproject.toml. The extension is built from csrc/: the CPU
sources always, the CUDA sources when torch was built with CUDA and nvcc is found.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_available():
    """True when torch was built with CUDA and nvcc is found (CUDA_HOME or PATH)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("SYMNMF_NO_CUDA") == "1" or torch.version.cuda is None or CUDA_HOME is None:
        return False
    return os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))


def extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # OpenMP parallelises the CPU SpMM over rows; Apple's clang has no -fopenmp and gets a serial build.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx_flags = ["-O3"] + openmp
    if _cuda_available():
        cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        ext = CUDAExtension(
            "symnmf_kernels._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension("symnmf_kernels._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extensions()

setup(
    packages=find_packages(include=["symnmf_kernels", "symnmf_kernels.*"])
    + find_packages(where="python", include=["symnmf", "symnmf.*"]),
    package_dir={"symnmf": "python/symnmf"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
