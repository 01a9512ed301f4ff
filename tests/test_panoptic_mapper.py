"""EfficientPSPanopticMapper: targets agree with the PNG, and transforms keep maps aligned."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from efficientps.class_tables import PanopticClassTables
from efficientps.data import EfficientPSPanopticMapper
from efficientps.data.transforms import RandomScale
from efficientps.evaluation import read_panoptic_png

from .helpers import CONFIGS, registered_synthetic_train_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_mapper")
    name = registered_synthetic_train_split(root, "synth_mapper", count=4, seed=5)
    records = DatasetCatalog.get(name)
    # One crowd segment, to check it is not an instance and keeps its class only by choice.
    crowd = next(s for s in records[0]["segments_info"] if s["category_id"] == 6)
    crowd["iscrowd"] = 1
    return name, records, crowd["id"]


def make_mapper(name, augmentations):
    return EfficientPSPanopticMapper(
        is_train=True,
        augmentations=augmentations,
        class_tables=PanopticClassTables.from_metadata(MetadataCatalog.get(name)),
        ignore_label=255,
    )


def expected_targets(record):
    ids = read_panoptic_png(record["pan_seg_file_name"])
    semantic = np.full(ids.shape, 255, np.int64)
    masks, classes = [], []
    for s in record["segments_info"]:
        semantic[ids == s["id"]] = s["category_id"]  # crowd too: the default keeps its class
        if s["category_id"] >= 5 and not s["iscrowd"]:
            masks.append(ids == s["id"])
            classes.append(s["category_id"] - 5)  # things are channels 5, 6, 7 -> 0, 1, 2
    return semantic, np.stack(masks), classes


def test_targets_match_the_png(dataset):
    name, records, crowd_id = dataset
    mapper = make_mapper(name, [])
    for record in records:
        out = mapper(record)
        semantic, masks, classes = expected_targets(record)
        assert (out["sem_seg"].numpy() == semantic).all()
        instances = out["instances"]
        assert instances.gt_classes.tolist() == classes
        assert (instances.gt_masks.tensor.numpy() == masks).all()
        for mask, box in zip(masks, instances.gt_boxes.tensor.tolist()):
            ys, xs = np.nonzero(mask)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    crowd_pixels = read_panoptic_png(records[0]["pan_seg_file_name"]) == crowd_id
    assert crowd_pixels.sum() > 0
    assert (mapper(records[0])["sem_seg"].numpy()[crowd_pixels] == 6).all()
    mapper.crowd_in_semantic = False  # INPUT.CROWD_IN_SEMANTIC False
    assert (mapper(records[0])["sem_seg"].numpy()[crowd_pixels] == 255).all()


def test_flip_and_crop_move_image_and_maps_together(dataset):
    name, records, _ = dataset
    record = records[1]
    plain = make_mapper(name, [])(record)
    flipped = make_mapper(name, [T.RandomFlip(prob=1.0)])(record)
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["sem_seg"], plain["sem_seg"].flip(-1))
    assert torch.equal(
        flipped["instances"].gt_masks.tensor, plain["instances"].gt_masks.tensor.flip(-1)
    )

    crop = T.CropTransform(30, 10, 64, 40)
    cropped = make_mapper(name, [_Fixed(crop)])(record)
    assert torch.equal(cropped["image"], plain["image"][:, 10:50, 30:94])
    assert torch.equal(cropped["sem_seg"], plain["sem_seg"][10:50, 30:94])
    # Instances cut by the crop keep exactly their visible pixels, and boxes follow the masks.
    for mask, box in zip(cropped["instances"].gt_masks.tensor, cropped["instances"].gt_boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_random_scale_keeps_labels_nearest(dataset):
    name, records, _ = dataset
    out = make_mapper(name, [RandomScale(1.5, 1.5)])(records[2])
    assert out["image"].shape[-2:] == (96, 192) == out["sem_seg"].shape
    labels = set(out["sem_seg"].unique().tolist())
    assert labels <= set(range(8)) | {255}  # nearest resampling: no blended labels


def test_config_mapper_uses_scale_crop_and_flip():
    from detectron2.config import get_cfg

    from efficientps import add_efficientps_config

    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "demo" / "efficientps_synthetic_cpu.yaml"))
    mapper = EfficientPSPanopticMapper(cfg, is_train=True)
    kinds = [type(a).__name__ for a in mapper.augmentations.augs]
    assert kinds == ["ResizeShortestEdge", "RandomScale", "RandomCrop", "RandomFlip"]
    test_mapper = EfficientPSPanopticMapper(cfg, is_train=False)
    assert [type(a).__name__ for a in test_mapper.augmentations.augs] == ["ResizeShortestEdge"]


class _Fixed(T.Augmentation):
    """An augmentation that always returns the given transform."""

    def __init__(self, transform):
        super().__init__()
        self.transform = transform

    def get_transform(self, image):
        return self.transform


def test_targets_of_a_hand_built_image(tmp_path):
    """A 4x6 panoptic PNG with known segments: the targets, written out by hand."""
    from efficientps_pq import write_panoptic_png

    ids = np.array(
        [
            [0, 11, 11, 20, 20, 0],
            [11, 11, 11, 20, 20, 33],
            [11, 11, 44, 44, 33, 33],
            [11, 11, 44, 44, 33, 33],
        ],
        np.uint32,
    )
    write_panoptic_png(str(tmp_path / "pan.png"), ids)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "image.png")
    record = {
        "file_name": str(tmp_path / "image.png"),
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "height": 4,
        "width": 6,
        "segments_info": [
            {"id": 11, "category_id": 1, "iscrowd": 0},  # stuff channel 1
            {"id": 20, "category_id": 7, "iscrowd": 0},  # thing channel 7 -> index 2
            {"id": 33, "category_id": 5, "iscrowd": 0},  # thing channel 5 -> index 0
            {"id": 44, "category_id": 6, "iscrowd": 1},  # crowd of thing channel 6
        ],
    }
    mapper = EfficientPSPanopticMapper(
        is_train=True,
        augmentations=[],
        class_tables=PanopticClassTables((0, 1, 2, 3, 4), (5, 6, 7)),
        ignore_label=255,
    )
    out = mapper(record)
    assert out["sem_seg"].tolist() == [
        [255, 1, 1, 7, 7, 255],
        [1, 1, 1, 7, 7, 5],
        [1, 1, 6, 6, 5, 5],
        [1, 1, 6, 6, 5, 5],
    ]
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [2, 0]  # crowd: never an instance
    assert instances.gt_boxes.tensor.tolist() == [[3.0, 0.0, 5.0, 2.0], [4.0, 1.0, 6.0, 4.0]]
    assert instances.gt_masks.tensor[1].int().tolist() == [
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ]
