"""The claims of ``benchmarks/claims.py``: runs, statistics, report, and one module per claim."""
