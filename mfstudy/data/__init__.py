"""Reading interaction data: dataset loaders, the synthetic generator, cleaning and encoding."""

from mfstudy.data._interactions import CleanStats, Interactions, RawInteractions, clean

__all__ = ["CleanStats", "Interactions", "RawInteractions", "clean"]
