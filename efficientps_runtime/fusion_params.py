"""The panoptic fusion's settings, in one place for the model, the export and the runtime.

The PyTorch fusion module is built with them from the config (``FusionParams.from_config``),
the exporter writes them to metadata.json (``to_metadata``) and the runtime reads them back
(``from_metadata``, which checks every key). A new setting is added here and nowhere else.
"""

from dataclasses import asdict, dataclass
from typing import Tuple

from .detection_quality import NUM_FEATURES

PIXEL_RULES = ("argmax", "owner", "authors")
# The config key of each setting (MODEL.EFFICIENTPS.<key>).
CONFIG_KEYS = {
    "score_thresh": "FUSION_SCORE_THRESH",
    "overlap_thresh": "FUSION_OVERLAP_THRESH",
    "stuff_area": "FUSION_STUFF_AREA",
    "stuff_area_reference": "FUSION_STUFF_AREA_REFERENCE",
    "mask_logit_scale": "FUSION_MASK_LOGIT_SCALE",
    "pixel_rule": "FUSION_PIXEL_RULE",
}


class FusionSettingError(ValueError):
    """A fusion setting of the wrong type or value: ``key`` names it (a config key, a
    metadata.json key or a field), the message says what it is and what was expected."""

    def __init__(self, key, value, expected, config=False):
        shown = f"{key}={value!r:.60}" if config else f"{key} is {value!r:.60}"
        super().__init__(f"{shown}; expected {expected}")
        self.key, self.value, self.expected = key, value, expected


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked(key, value):
    """FusionSettingError unless ``key`` may take ``value``."""
    if key == "stuff_area_reference":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_number, value))
        expected = "[height, width]"
    elif key == "pixel_rule":
        ok, expected = value in PIXEL_RULES, f"one of {PIXEL_RULES}"
    else:
        ok, expected = _number(value), "a number"
    if not ok:
        raise FusionSettingError(key, value, expected)


@dataclass(frozen=True)
class FusionParams:
    """Settings of the paper's fusion (and its variants).

    score_thresh, overlap_thresh: detections below ``score_thresh`` are not fused; an instance
        more than ``overlap_thresh`` covered by better ones is dropped.
    stuff_area, stuff_area_reference: the smallest stuff segment in pixels at the reference
        (H, W), scaled with the output's area (``stuff_area_at``).
    mask_logit_scale: multiplies the mask logits before fusing (authors' code: 4).
    pixel_rule: "argmax" (paper), "owner" or "authors" (see ``fuse_panoptic``).
    """

    score_thresh: float = 0.5
    overlap_thresh: float = 0.5
    stuff_area: float = 2048
    stuff_area_reference: Tuple[int, int] = (1024, 2048)
    mask_logit_scale: float = 1.0
    pixel_rule: str = "argmax"

    def __post_init__(self):
        for key in CONFIG_KEYS:
            _checked(key, getattr(self, key))
        object.__setattr__(self, "stuff_area_reference", tuple(self.stuff_area_reference))

    def stuff_area_at(self, height, width):
        """The smallest stuff segment in pixels for an output of (height, width)."""
        ref_h, ref_w = self.stuff_area_reference
        return self.stuff_area * (height * width) / (ref_h * ref_w)

    @classmethod
    def from_config(cls, cfg):
        """From ``cfg.MODEL.EFFICIENTPS`` (an error names the config key)."""
        node = cfg.MODEL.EFFICIENTPS
        try:
            return cls(**{name: getattr(node, key) for name, key in CONFIG_KEYS.items()})
        except FusionSettingError as error:
            key = f"MODEL.EFFICIENTPS.{CONFIG_KEYS[error.key]}"
            raise FusionSettingError(key, error.value, error.expected, config=True) from error

    def to_metadata(self, quality=None):
        """metadata.json's "fusion": the settings and the learned fusion's detection quality
        (None, or {"feature_weights": 5 numbers, "class_bias": one number per thing class})."""
        fusion = asdict(self)
        fusion["stuff_area_reference"] = list(self.stuff_area_reference)
        fusion["quality"] = quality
        return fusion

    @classmethod
    def from_metadata(cls, fusion, num_things):
        """(FusionParams, quality or None) from metadata.json's "fusion"; every key checked
        (FusionSettingError naming ``fusion.<key>``)."""
        if not isinstance(fusion, dict):
            raise FusionSettingError("fusion", fusion, "an object")
        quality = fusion.get("quality", "missing")
        if quality is not None:
            _check_quality(quality, num_things)
        try:
            return cls(**{key: fusion.get(key) for key in CONFIG_KEYS}), quality
        except FusionSettingError as error:
            raise FusionSettingError(f"fusion.{error.key}", error.value, error.expected) from error


def _numbers(value, count):
    return isinstance(value, list) and len(value) == count and all(map(_number, value))


def _check_quality(quality, num_things):
    """FusionSettingError unless ``quality`` is the learned quality's metadata."""
    expected = (
        f'null or {{"feature_weights": {NUM_FEATURES} numbers, '
        f'"class_bias": {num_things} numbers}}'
    )
    ok = (
        isinstance(quality, dict)
        and set(quality) == {"feature_weights", "class_bias"}
        and _numbers(quality["feature_weights"], NUM_FEATURES)
        and _numbers(quality["class_bias"], num_things)
    )
    if not ok:
        raise FusionSettingError("fusion.quality", quality, expected)
