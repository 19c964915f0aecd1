"""Capacity planning with the real perf_analyzer (from tritonclient[all]==2.50.0).
``python -m perf --help``."""
