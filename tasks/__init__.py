"""Stages, one module per stage (options, model loader, pure compute, thin Prefect task), and the rooms
they are built from: ``kit`` (the stage mechanism), ``helpers`` (pure audio and text helpers),
``networks`` (model architectures voxflow defines itself) and ``testing`` (random-weight model builders)."""
