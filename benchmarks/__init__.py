"""Benchmarks for lpnum: run each as ``python -m benchmarks.<name>``."""
