"""Capacity planning of the served ensemble with the real perf_analyzer (from
tritonclient[all]==2.50.0): sweeps, serving-variant tuning, the planner and the report.
``python -m perf --help``; the MIPS benchmark is ``python -m mipsbench``."""
