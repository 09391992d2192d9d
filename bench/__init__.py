"""Benchmarks of symnmf-kernels; run the scripts from the repository root (see bench/common.py)."""
