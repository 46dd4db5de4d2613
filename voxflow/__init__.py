"""voxflow: a Prefect-orchestrated pipeline for speech audio.

One distribution, one namespace: ``voxflow.flows``, ``voxflow.tasks``, ``voxflow.blocks`` and
``voxflow.storage`` live in the repository's top-level folders of those names (pyproject.toml maps them).
"""

__version__ = "0.1.0"
