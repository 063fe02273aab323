"""Models tuned by the study, all behind :class:`Recommender`."""

from __future__ import annotations

from mfstudy.models._base import Callback, DivergedError, Recommender

__all__ = ["Callback", "DivergedError", "Recommender", "model_class"]


def model_class(family: str) -> type[Recommender]:
    """The model class registered under `family` (`wrmf`, `sgd`, `als`, `baseline`)."""
    registry: dict[str, type[Recommender]] = {cls.family: cls for cls in _registered()}
    try:
        return registry[family]
    except KeyError:
        known = ", ".join(sorted(registry)) or "none"
        raise ValueError(f"unknown model family {family!r}; known: {known}") from None


def _registered() -> list[type[Recommender]]:
    # Filled as model families land; imported lazily so `import mfstudy.models` stays cheap.
    from mfstudy.models.explicit import ALSMF, SGDMF, Baseline
    from mfstudy.models.wrmf import WRMF

    return [WRMF, SGDMF, ALSMF, Baseline]
