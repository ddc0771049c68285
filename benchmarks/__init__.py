"""Experiments, not product: benchmark drivers, calibrations and evaluations, run from the repository
root as `python -m benchmarks.NAME`. No package imports this one (an import-linter contract)."""
