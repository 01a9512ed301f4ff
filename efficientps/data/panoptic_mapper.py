"""Dataset mapper: image + panoptic PNG + segments_info -> image, sem_seg, instances.

One set of detectron2 transforms is drawn per sample and applied to the image and to the
panoptic id map alike (nearest for the map), so semantic and instance targets stay aligned.
sem_seg holds semantic channels for every class; void pixels get the metadata's ignore value,
crowd regions their class (as the authors' training targets; ``crowd_in_semantic=False``
ignores them). Instances carry thing indices (through the class tables), boxes from the masks
and bit masks; crowd segments are not instances.
"""

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from efficientps_pq.panoptic_ids import rgb_to_id

from ..class_tables import PanopticClassTables
from .datasets.coco_panoptic import DatasetFormatError
from .transforms import RandomScale

logger = logging.getLogger(__name__)


def _read(path, fmt, what):
    try:
        return utils.read_image(path, format=fmt)
    except Exception as e:
        raise DatasetFormatError(f"cannot read {what} {path}: {e}") from e


def _scale_range(cfg):
    scale_range = list(cfg.INPUT.SCALE_RANGE)
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(
            f"INPUT.SCALE_RANGE={scale_range}; expected [min, max] with 0 < min <= max "
            "(the paper: [0.5, 2.0])"
        )
    return scale_range


class EfficientPSPanopticMapper:
    """Maps a panoptic dataset record to EfficientPS' training or inference inputs.

    Constructible as ``EfficientPSPanopticMapper(cfg, is_train=True)`` like detectron2's
    DatasetMapper, or with explicit arguments.
    """

    @configurable
    def __init__(
        self,
        is_train=True,
        *,
        augmentations,
        image_format="RGB",
        class_tables: PanopticClassTables,
        ignore_label=255,
        crowd_in_semantic=True,
    ):
        """
        Args:
            is_train: build training targets (sem_seg, instances) from the panoptic PNG; at
                test time only the image is read and resized.
            augmentations: detectron2 augmentations applied to the image and its maps.
            image_format: the model's input format (INPUT.FORMAT).
            class_tables: semantic channels of the stuff and thing classes.
            ignore_label: semantic target of void pixels (must be the dataset's).
            crowd_in_semantic: crowd regions keep their class in sem_seg (else ignored).
        """
        self.is_train = is_train
        self.crowd_in_semantic = crowd_in_semantic
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.class_tables = class_tables
        self.ignore_label = ignore_label
        self.thing_index = class_tables.thing_index_of_channel()
        self.num_segments_missing_from_png = 0
        # Panoptic PNGs whose ids were checked against their json: a full-size np.unique per
        # file once per worker, not once per epoch.
        self._checked_files = set()
        logger.info(f"[EfficientPSPanopticMapper] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if is_train:
            # detectron2's base resize (e.g. Vistas to a ~2048 shorter side), then the paper's
            # random scale around it, crop and flip.
            augmentations = [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                ),
                RandomScale(*_scale_range(cfg)),
            ]
            if cfg.INPUT.CROP.ENABLED:
                augmentations.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            if cfg.INPUT.RANDOM_FLIP != "none":
                augmentations.append(
                    T.RandomFlip(
                        horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                        vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                    )
                )
        else:
            augmentations = [
                T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
            ]
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if names:
            dataset_ignore = getattr(MetadataCatalog.get(names[0]), "ignore_label", ignore_label)
            if dataset_ignore != ignore_label:
                raise ValueError(
                    f"dataset {names[0]!r} uses ignore label {dataset_ignore} but "
                    f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {ignore_label}; set them equal"
                )
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "crowd_in_semantic": cfg.INPUT.CROWD_IN_SEMANTIC,
            "class_tables": PanopticClassTables.from_config(cfg),
            "ignore_label": ignore_label,
        }

    def __call__(self, dataset_dict):
        record = copy.deepcopy(dataset_dict)
        image = _read(record["file_name"], self.image_format, "image")
        utils.check_image_size(record, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return record

        pan_file = record["pan_seg_file_name"]
        pan_rgb = _read(pan_file, "RGB", "panoptic PNG")
        if pan_rgb.shape[:2] != (record["height"], record["width"]):
            raise DatasetFormatError(
                f"panoptic PNG {pan_file} is {pan_rgb.shape[1]}x{pan_rgb.shape[0]} but its image "
                f"{record['file_name']} is {record['width']}x{record['height']}"
            )
        if pan_file not in self._checked_files:
            self._check_ids(rgb_to_id(pan_rgb), record)
            self._checked_files.add(pan_file)
        ids = rgb_to_id(transforms.apply_segmentation(pan_rgb))
        record["sem_seg"], record["instances"] = self._targets(ids, record["segments_info"])
        return record

    def _check_ids(self, ids, record):
        present = set(np.unique(ids).tolist()) - {0}
        listed = {s["id"] for s in record["segments_info"]}
        unknown = present - listed
        if unknown:
            raise DatasetFormatError(
                f"panoptic PNG {record['pan_seg_file_name']} has segment ids "
                f"{sorted(unknown)[:10]} that its json segments_info does not list"
            )
        missing = listed - present
        if missing:
            self.num_segments_missing_from_png += len(missing)
            logger.warning(
                f"{record['pan_seg_file_name']}: json segments {sorted(missing)[:10]} are not in "
                f"the PNG; ignored ({self.num_segments_missing_from_png} so far)"
            )

    def _targets(self, ids, segments_info):
        unique, inverse = np.unique(ids, return_inverse=True)
        inverse = inverse.reshape(ids.shape)
        by_id = {s["id"]: s for s in segments_info}
        channel_lut = np.full(len(unique), self.ignore_label, dtype=np.int64)
        instance_rows, classes = [], []
        for row, segment_id in enumerate(unique.tolist()):
            segment = by_id.get(segment_id)
            if segment is None:
                continue  # void: ignored in sem_seg
            crowd = bool(segment.get("iscrowd", 0))
            channel = segment["category_id"]
            if not crowd or self.crowd_in_semantic:
                channel_lut[row] = channel
            if channel in self.thing_index and not crowd:  # a crowd is never an instance
                instance_rows.append(row)
                classes.append(self.thing_index[channel])
        sem_seg = torch.as_tensor(channel_lut[inverse])
        instances = Instances(ids.shape)
        masks = torch.as_tensor(inverse[None] == np.asarray(instance_rows).reshape(-1, 1, 1))
        instances.gt_masks = BitMasks(masks)
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        return sem_seg, instances
