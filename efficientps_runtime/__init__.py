"""EfficientPS without PyTorch or detectron2: an exported model run with onnxruntime.

    python -m efficientps_runtime --model DIR --input 'images/*.png' --output OUT

    from efficientps_runtime import Session
    ids, segments_info = Session("DIR").predict(bgr_image)

``DIR`` is what ``tools/export_model.py`` writes (model.onnx + metadata.json). Part of the
efficientps distribution, kept apart from the ``efficientps`` package (which imports torch and
detectron2) like ``efficientps_pq``: onnxruntime, NumPy, OpenCV and Pillow only.
"""

from .fusion import PanopticFusion
from .session import (
    GraphOutputError,
    InputImageError,
    ModelFolderError,
    PrecisionError,
    Prediction,
    Session,
    read_metadata,
    resized_shape,
)

__all__ = [
    "GraphOutputError",
    "InputImageError",
    "ModelFolderError",
    "PanopticFusion",
    "PrecisionError",
    "Prediction",
    "Session",
    "read_metadata",
    "resized_shape",
]
