"""Benchmarks: latency against EfficientAD-M and the reference path, FLOP and parameter counts."""
