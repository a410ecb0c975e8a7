"""The compiled part of ckptmap: two optional kernels, a transpose (ckptmap/native/transpose.c) and a scan of an
array's bits for NaN/Inf (ckptmap/native/scan.c).

`optional=True`: where no C compiler is found the install goes on without them, and ckptmap uses numpy instead (the
same results, more slowly). Everything else is configured in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(f"ckptmap.native.{name}", [f"ckptmap/native/{name}.c"], optional=True,
                             extra_compile_args=["-O2"]) for name in ("transpose", "scan")])
