"""The MIPS benchmark: GRank's first stage (inner product + top-k over the whole catalogue)
against exact and index-based peers and against the machine's floor, on CPU and GPU.

- ``methods``: the CPU methods (the served ONNX module, its int8 form, torch, FAISS flat / HNSW /
  IVF-Flat / IVF-PQ) behind one ``build`` / ``search`` interface;
- ``geometry``: synthetic catalogues drawn from a mixture fitted to the trained item vectors;
- ``floor``: the machine's bandwidth and GEMM rates and the floor they set;
- ``measure``: latency, best-of-repeats timing, recall;
- ``cpu`` / ``gpu``: the runs, merged into docs/performance.json;
- ``report`` / ``gpu_report``: the MIPS sections of docs/PERFORMANCE.md.

``python -m mipsbench --help``. Rendering the whole of PERFORMANCE.md (these sections and the
served ensemble's) is ``python -m perf report``.
"""
