"""KITTI panoptic (the EfficientPS authors' release), registered as ``kitti_panoptic_{train,val}``.

The release stores RGB id PNGs over Cityscapes label ids (id < 1000: stuff or crowd class id;
id >= 1000: instance of class id // 1000). ``datasets/prepare_kitti_panoptic.py`` turns them into
COCO-panoptic PNGs (void = 0) and a json per split, which is what is registered here.
"""

import os

from .cityscapes import cityscapes_categories
from .coco_panoptic import register_coco_panoptic

KITTI_SPLITS = {"train": "training", "val": "validation"}
KITTI_TREE = """\
{root}/
  training/images/*.png       validation/images/*.png       (the authors' release)
  training/annotations/*.png  validation/annotations/*.png  (the authors' release)
  training/panoptic/*.png     validation/panoptic/*.png     (by prepare_kitti_panoptic.py)
  training_panoptic.json      validation_panoptic.json      (by prepare_kitti_panoptic.py)"""


def kitti_paths(root, split):
    folder = KITTI_SPLITS[split]
    return (
        os.path.join(root, folder, "images"),
        os.path.join(root, folder, "panoptic"),
        os.path.join(root, f"{folder}_panoptic.json"),
    )


def register_kitti_panoptic(name, root, split):
    image_root, panoptic_root, panoptic_json = kitti_paths(root, split)
    hint = KITTI_TREE.format(root=root) + (
        f"\nMake the derived files with: python datasets/prepare_kitti_panoptic.py --root {root}"
    )
    return register_coco_panoptic(
        name,
        image_root,
        panoptic_root,
        panoptic_json,
        cityscapes_categories(),
        missing_hint=hint,
        image_size_hint=(384, 1280),
    )
