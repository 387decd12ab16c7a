"""Evaluation harness, metrics, baselines and importers for routing benchmarks."""
