"""Only here for cffi: setuptools takes `cffi_modules` from setup(); the rest is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["hypercall/_build.py:ffibuilder"])
