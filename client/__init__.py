"""Python clients for the GRank Triton ensemble (gRPC and HTTP, sync and async).
``python -m client --help`` for the CLI; ``client.grank_client.GRankClient`` for the library."""
