"""Makes `tests/` importable (sovryn_support) for every Python test suite."""
