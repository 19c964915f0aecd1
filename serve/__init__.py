"""Run the GRank model repository on a real Triton Inference Server (the binary of the
``nvidia-pytriton`` wheel) on a CPU machine. ``python -m serve --help``."""
