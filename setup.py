"""Builds the optional CUDA extension tts_engine._C (csrc/) when torch has CUDA and nvcc is found;
everything else is pure Python and falls back to torch when the extension is absent.
On a GPU machine: pip install -e . --no-build-isolation (so the build sees the installed torch)."""
import os

from setuptools import setup


def cuda_extension():
    if os.environ.get("TTS_ENGINE_NO_CUDA_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return [], {}
    ext = CUDAExtension("tts_engine._C", ["csrc/bindings.cpp", "csrc/sampling.cu"],
                        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
