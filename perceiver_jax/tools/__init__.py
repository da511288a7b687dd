"""Tools around runs: FLOPs, benchmarks, the TPU compile, tables, pictures, sweeps and the miniature."""
