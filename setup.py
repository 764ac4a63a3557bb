"""Build of pinit's optional C accelerator (everything else is in pyproject.toml).

``pinit._kernel`` reduces chunks of float32/bfloat16/float16 values in one call. It is optional:
if no C compiler is at hand the build says so and goes on, and pinit falls back to numpy.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            args = ["/O2", "/openmp:experimental"]
        else:
            # -fopenmp-simd only honours the `omp simd` loop pragmas: no OpenMP runtime is linked.
            args = ["-O3", "-fopenmp-simd", "-std=c99"]
        for ext in self.extensions:
            ext.extra_compile_args = [*ext.extra_compile_args, *args]
        super().build_extensions()


setup(
    ext_modules=[Extension("pinit._kernel", ["src/pinit/_kernel.c"], optional=True)],
    cmdclass={"build_ext": BuildExt},
)
