"""The embedded VQA dataset generator: rendered shape scenes and matplotlib charts with short-answer questions."""

from .build import DatasetSpec, build_dataset, is_built

__all__ = ["DatasetSpec", "build_dataset", "is_built"]
