"""Build of pinit's optional C accelerator (everything else is in pyproject.toml).

``pinit._kernel`` reduces chunks of float32/bfloat16/float16 values in one call. It is optional:
if no C compiler is at hand the build says so and goes on, and pinit falls back to numpy.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError


class BuildExt(build_ext):
    def build_extension(self, ext: Extension) -> None:
        # -fopenmp-simd only honours the `omp simd` loop pragmas: no OpenMP runtime is linked.
        args = ["/O2"] if self.compiler.compiler_type == "msvc" else ["-O3", "-fopenmp-simd", "-std=c99"]
        plain = list(ext.extra_compile_args)
        ext.extra_compile_args = [*plain, *args]
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, ExecError, PlatformError):
            # a compiler that refuses one of these flags still builds the kernel, less tuned
            ext.extra_compile_args = plain
            super().build_extension(ext)


setup(
    ext_modules=[Extension("pinit._kernel", ["src/pinit/_kernel.c"], optional=True)],
    cmdclass={"build_ext": BuildExt},
)
