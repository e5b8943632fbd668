"""Benchmark evaluation: registered scorers (benchmarks.py), ground-truth readers
(references.py), generation with the rollout engine (runner.py) and the report (report.py)."""
