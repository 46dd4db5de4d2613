"""Prefect flows: each module is one flow whose body reads like its stage list."""
