"""Hydra launcher plugin: run framework training jobs on a Ray cluster (Ray Jobs API + Ray Train)."""

__version__ = "0.1.0"
