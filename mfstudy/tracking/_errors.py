"""Errors of the tracking layer (kept free of MLflow imports so raising them is cheap)."""

from __future__ import annotations

from mfstudy.errors import MFStudyError

__all__ = ["HoldoutMismatchError", "TrackingError", "UnknownIdError"]


class TrackingError(MFStudyError):
    """The MLflow tracking server or registry cannot do what the study needs (one line)."""

    transient = True  # mostly a server away or a connection lost: a retry may go through


class HoldoutMismatchError(TrackingError):
    """Champion and candidate were scored on different holdouts: their scores do not compare."""

    transient = False  # the same two holdouts differ the same way on every try


class UnknownIdError(MFStudyError, KeyError):
    """A raw user or item id that the logged model has never seen."""

    def __str__(self) -> str:
        # KeyError would quote the message; keep MFStudyError's one-line form.
        return MFStudyError.__str__(self)
