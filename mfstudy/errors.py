"""User-facing errors.

Every problem a user can fix (a missing file, a bad column, a typo in a config key) is raised as an
:class:`MFStudyError`. The CLI prints its message as one line and exits non-zero; anything else
escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DownloadError",
    "MFStudyError",
    "RetrainGateError",
    "SplitError",
    "StudyError",
]


class MFStudyError(Exception):
    """A problem with the user's input, reported as one line naming what is wrong."""

    exit_code: int = 2
    #: Whether the same call may succeed when simply repeated (a network blip), so that an
    #: orchestrator's retry is worth it; a wrong path or a bad value fails the same way again.
    transient: bool = False

    def __str__(self) -> str:
        # Collapse newlines so the message stays a single line wherever it is printed.
        # BaseException's, not super()'s: a subclass that is also a KeyError would quote it.
        return " ".join(BaseException.__str__(self).split())


class ConfigError(MFStudyError):
    """A study config that does not validate (unknown key, bad value, unreadable file)."""


class DataError(MFStudyError):
    """Input data that cannot be used (missing file or column, bad values, nothing left)."""


class DownloadError(DataError):
    """A public dataset could not be fetched (network, server): worth another try."""

    transient = True


class SplitError(MFStudyError):
    """A split that cannot be made with the data at hand (too few eligible users, k too large)."""


class StudyError(MFStudyError):
    """A study that cannot go on (no complete trial to retrain, storage mismatch)."""


class RetrainGateError(DataError):
    """Today's data lost too much of the champion's (users, interactions, ids) or changed its
    schema: the nightly retraining kept the champion and registered nothing.

    The message is the one line saying what changed and by how much; `report` is the same as
    Markdown with the whole comparison (for the Prefect artifact). Not worth a retry: the
    same data fails the same way.
    """

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[type[RetrainGateError], tuple[str, str]]:
        # Pickled with its report (results cross process boundaries in Prefect and Dask).
        return (type(self), (BaseException.__str__(self), self.report))
