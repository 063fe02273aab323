"""Thread caps for BLAS, OpenMP and numba, and a model fit under one.

Trials run side by side (several worker processes on one machine), so each caps the threads its
numeric libraries start; otherwise 2 trials with 2 threads each on 2 cores oversubscribe them.
Core module: no Optuna, MLflow or Prefect.
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp

from mfstudy.models import Callback, Recommender

__all__ = ["fit_capped", "limit_threads"]


def limit_threads(threads: int) -> Any:
    """Cap BLAS, OpenMP and numba threads for this process; returns the threadpoolctl handle
    (keep it alive). Parallel trials on 2 cores with 2 threads each would oversubscribe."""
    from threadpoolctl import threadpool_limits

    handle = threadpool_limits(limits=threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    return handle


def fit_capped(
    model: Recommender, matrix: sp.csr_matrix, threads: int, callback: Callback | None = None
) -> Recommender:
    """`model.fit(matrix, callback=callback)` with BLAS, OpenMP and numba capped at `threads`
    (:func:`limit_threads`), so the callback (a trial's evaluation) runs capped too; returns
    `model`. The caps are set when the fit starts and are not lifted after it: dropping
    threadpoolctl's handle restores nothing, as at the call sites this replaces."""
    handle = limit_threads(threads)
    try:
        model.fit(matrix, callback=callback)
    finally:
        del handle
    return model
