"""Explicit-rating matrix factorization with biases: SGD (KernelMF kernels), ALS, baseline.

Numba kernels in `_kernels.py`, their slow NumPy references in `_reference.py`, estimators in
`_models.py`.
"""

from __future__ import annotations

from mfstudy.models.explicit._models import ALSMF, SGDMF, Baseline

__all__ = ["ALSMF", "SGDMF", "Baseline"]
