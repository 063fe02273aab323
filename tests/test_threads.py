"""`fit_capped`: a model's fit, and the callback inside it, run under the thread cap."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_info, threadpool_limits

from mfstudy.threads import fit_capped


def _caps() -> tuple[int, set[int]]:
    """numba's thread count and those of the loaded BLAS/OpenMP pools."""
    return numba.get_num_threads(), {p["num_threads"] for p in threadpool_info()}


class _Probe:
    """Records the thread caps its fit runs with, and calls the callback once."""

    def __init__(self) -> None:
        self.train: sp.csr_matrix | None = None
        self.caps: tuple[int, set[int]] | None = None

    def fit(self, train: sp.csr_matrix, callback: Any = None) -> _Probe:
        self.train, self.caps = train, _caps()
        if callback is not None:
            callback(1, self)
        return self


def test_fit_and_its_callback_run_capped_and_the_model_is_returned() -> None:
    matrix = sp.csr_matrix(np.eye(3, dtype=np.float32))
    probe = _Probe()
    in_callback: list[tuple[int, set[int]]] = []
    numba_before = numba.get_num_threads()
    # The context restores the pools' original limits afterwards (fit_capped leaves them set).
    with threadpool_limits(limits=None):
        try:
            out = fit_capped(
                probe,  # type: ignore[arg-type]
                matrix,
                1,
                callback=lambda epoch, m: in_callback.append(_caps()),
            )
        finally:
            numba.set_num_threads(numba_before)
    assert out is probe and probe.train is matrix
    assert probe.caps is not None and probe.caps[0] == 1 and probe.caps[1] <= {1}
    assert in_callback == [probe.caps]
