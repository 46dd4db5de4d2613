"""Stages: one module per stage (options dataclass, pure compute, thin Prefect task) plus shared helpers."""
