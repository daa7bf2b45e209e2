"""The tiny runs and exports used here (fixtures `tiny_data`, `runs`, `exported`) are in tests/conftest.py."""

from tests.conftest import ssa_convert  # noqa: F401  (test_convert.py imports it from here)
