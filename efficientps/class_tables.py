"""The one explicit table between semantic channels, stuff classes and thing indices.

The semantic head predicts every class on contiguous channels 0..C-1; the ROI heads predict
thing indices 0..T-1. ``thing_channels[j]`` is the semantic channel of thing index j and
``stuff_channels[k]`` that of stuff class k. Dataset mappers, the model and the evaluator all
use this table; nothing does arithmetic on ids (on Cityscapes things are channels 11..18 while
ROI classes are 0..7, and channel 0 is road, not "things").
"""

from dataclasses import dataclass
from typing import Tuple


def channel_to_dataset_id(metadata):
    """{semantic channel: the dataset's own category id} from detectron2 panoptic metadata."""
    return {
        **{v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()},
        **{v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()},
    }


@dataclass(frozen=True)
class PanopticClassTables:
    stuff_channels: Tuple[int, ...]
    thing_channels: Tuple[int, ...]

    def __post_init__(self):
        both = set(self.stuff_channels) & set(self.thing_channels)
        if both:
            raise ValueError(f"channels cannot be stuff and thing at once: {sorted(both)}")
        channels = sorted(self.stuff_channels + self.thing_channels)
        if channels != list(range(len(channels))):
            raise ValueError(
                f"stuff and thing channels must cover 0..C-1 once each, got {channels}"
            )

    @property
    def num_classes(self):
        return len(self.stuff_channels) + len(self.thing_channels)

    @property
    def num_things(self):
        return len(self.thing_channels)

    def thing_index_of_channel(self):
        """{semantic channel: thing index} for the thing channels."""
        return {c: j for j, c in enumerate(self.thing_channels)}

    @classmethod
    def from_metadata(cls, metadata):
        """From detectron2 panoptic metadata (``*_dataset_id_to_contiguous_id`` maps).

        Thing channels are the thing map's values in increasing order (that order defines the
        thing index); stuff channels are the stuff map's values that are not things (the
        Cityscapes metadata of detectron2 lists only stuff there, COCO-style maps list all).
        An explicit ``stuff_channels``/``thing_channels`` pair on the metadata wins.
        """
        if hasattr(metadata, "missing_reason"):
            raise ValueError(f"dataset {metadata.name!r} is not usable: {metadata.missing_reason}")
        if hasattr(metadata, "thing_channels") and hasattr(metadata, "stuff_channels"):
            return cls(tuple(metadata.stuff_channels), tuple(metadata.thing_channels))
        try:
            things = metadata.thing_dataset_id_to_contiguous_id
            stuff = metadata.stuff_dataset_id_to_contiguous_id
        except AttributeError as e:
            raise ValueError(
                f"metadata {getattr(metadata, 'name', '?')!r} has no thing/stuff "
                "dataset_id_to_contiguous_id maps; cannot tell stuff from thing channels"
            ) from e
        thing_channels = tuple(sorted(set(things.values())))
        stuff_channels = tuple(sorted(set(stuff.values()) - set(thing_channels)))
        return cls(stuff_channels, thing_channels)

    @classmethod
    def from_config(cls, cfg):
        """MODEL.EFFICIENTPS.{STUFF,THING}_CHANNELS if set, else the first dataset's metadata."""
        from detectron2.data import MetadataCatalog

        efficientps_cfg = cfg.MODEL.EFFICIENTPS
        if len(efficientps_cfg.STUFF_CHANNELS) or len(efficientps_cfg.THING_CHANNELS):
            try:
                return cls(
                    tuple(efficientps_cfg.STUFF_CHANNELS), tuple(efficientps_cfg.THING_CHANNELS)
                )
            except ValueError as e:
                raise ValueError(
                    f"MODEL.EFFICIENTPS.STUFF_CHANNELS={list(efficientps_cfg.STUFF_CHANNELS)} and "
                    f"THING_CHANNELS={list(efficientps_cfg.THING_CHANNELS)}: {e}"
                ) from e
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
        if not names:
            raise ValueError(
                "set MODEL.EFFICIENTPS.STUFF_CHANNELS/THING_CHANNELS or DATASETS.TRAIN/TEST so "
                "that the model knows which semantic channels are stuff and which are things"
            )
        return cls.from_metadata(MetadataCatalog.get(names[0]))
