"""Benchmarks: each module prints a table of measured figures with ratios against a baseline
measured in the same run. `python -m bench [name ...]` runs them (all by default)."""
