"""Benchmark scripts (`python -m bench.model`, `python -m bench.service`); results in bench/results/."""
