"""Compiled kernels (Cython). Built by `pip install -e .`; see setup.py."""
