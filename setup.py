"""The one compiled part of ckptmap: an optional transpose kernel (ckptmap/native/transpose.c).

`optional=True`: where no C compiler is found the install goes on without it, and ckptmap.array_copy uses its numpy
tiles instead (same bytes, about half the speed). Everything else is configured in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ckptmap.native.transpose", ["ckptmap/native/transpose.c"], optional=True,
                             extra_compile_args=["-O2"])])
