"""Prefect tasks: thin wrappers over `mfstudy`, one per stage of a study.

Prefect is imported here and in `flows/` only; the library itself never depends on it.
"""
