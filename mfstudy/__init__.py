"""mfstudy: hyperparameter studies for matrix-factorization recommenders.

The core (data, thresholding, split, metrics, models) depends on the numerical stack only;
`mfstudy.tuning` adds Optuna and `mfstudy.tracking` MLflow.
"""

from mfstudy.errors import ConfigError, DataError, MFStudyError, SplitError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "MFStudyError", "SplitError", "__version__"]
