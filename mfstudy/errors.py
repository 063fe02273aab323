"""User-facing errors.

Every problem a user can fix (a missing file, a bad column, a typo in a config key) is raised as an
:class:`MFStudyError`. The CLI prints its message as one line and exits non-zero; anything else
escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "MFStudyError", "SplitError", "StudyError"]


class MFStudyError(Exception):
    """A problem with the user's input, reported as one line naming what is wrong."""

    exit_code: int = 2

    def __str__(self) -> str:
        # Collapse newlines so the message stays a single line wherever it is printed.
        # BaseException's, not super()'s: a subclass that is also a KeyError would quote it.
        return " ".join(BaseException.__str__(self).split())


class ConfigError(MFStudyError):
    """A study config that does not validate (unknown key, bad value, unreadable file)."""


class DataError(MFStudyError):
    """Input data that cannot be used (missing file or column, bad values, nothing left)."""


class SplitError(MFStudyError):
    """A split that cannot be made with the data at hand (too few eligible users, k too large)."""


class StudyError(MFStudyError):
    """A study that cannot go on (no complete trial to retrain, storage mismatch)."""
