"""Hydra launcher plugin: run framework training jobs on Kubernetes (Indexed Job, JobSet or PyTorchJob)."""

__version__ = "0.1.0"
