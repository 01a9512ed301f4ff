"""Datasets (registered at import), the panoptic mapper and the synthetic dataset."""

from . import datasets  # noqa: F401  (registers the built-in dataset names)
from .panoptic_mapper import EfficientPSPanopticMapper

__all__ = ["EfficientPSPanopticMapper"]
