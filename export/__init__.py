"""Export a trained GRank checkpoint to the served formats (ONNX, TensorRT) and build the
Triton model repository. ``python -m export --help``."""
