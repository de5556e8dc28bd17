"""Benchmarks for triage: run one with `python -m bench.<name>`."""
