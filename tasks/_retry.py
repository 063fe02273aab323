"""When a failed task run is worth another try."""

from __future__ import annotations

from typing import Any

from mfstudy.errors import MFStudyError

__all__ = ["unless_user_error"]


def unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failure that may pass on its own (a dataset
    download or a tracking server away: `MFStudyError.transient`, or an unexpected error),
    never a user's input error (a wrong path, a bad column, a refused resume). Those fail the
    same way again; retried, they cost seconds and bury their one-line cause in tracebacks."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, MFStudyError):
        return exc.transient
    return True
