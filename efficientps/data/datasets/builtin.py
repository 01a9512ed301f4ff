"""Registers the datasets under $DETECTRON2_DATASETS (default ./datasets) at import.

Your own data converted by datasets/prepare_custom_panoptic.py into
$DETECTRON2_DATASETS/custom/<NAME>/ is registered as custom_<NAME>_<split>.

DETECTRON2_DATASETS is read once, when efficientps is imported (as detectron2 does); Cityscapes
is detectron2's own registration (cityscapes_fine_panoptic_{train,val}) and is not redone.
"""

import glob
import os

from detectron2.data import DatasetCatalog

from .. import synthetic
from .coco_panoptic import register_coco_panoptic
from .kitti import register_kitti_panoptic
from .mapillary_vistas import register_mapillary_vistas

SYNTHETIC_TREE = """\
{root}/
  leftImg8bit/{{train,val}}/synth/*_leftImg8bit.png
  gtFine/cityscapes_panoptic_{{train,val}}/*_gtFine_panoptic.png
  gtFine/cityscapes_panoptic_{{train,val}}.json
Make it with: python -m efficientps.data.synthetic --out {root}"""


def register_synthetic_panoptic(name, root, split):
    return register_coco_panoptic(
        name,
        os.path.join(root, "leftImg8bit", split),
        os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
        os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
        synthetic.CATEGORIES,
        missing_hint=SYNTHETIC_TREE.format(root=root),
    )


CUSTOM_TREE = """\
{root}/
  images/<split>/...                 your images
  panoptic/<split>/*.png             made by datasets/prepare_custom_panoptic.py
  panoptic_<split>.json              made by datasets/prepare_custom_panoptic.py
Make it with: python datasets/prepare_custom_panoptic.py --root {root} --format ..."""


def register_custom_panoptic(root):
    """custom_<NAME>_<split> for every <root>/<NAME>/panoptic_<split>.json (the converter's)."""
    names = []
    for json_path in sorted(glob.glob(os.path.join(root, "*", "panoptic_*.json"))):
        folder = os.path.dirname(json_path)
        split = os.path.basename(json_path)[len("panoptic_") : -len(".json")]
        name = f"custom_{os.path.basename(folder)}_{split}"
        if name in DatasetCatalog.list():
            continue
        register_coco_panoptic(
            name,
            os.path.join(folder, "images", split),
            os.path.join(folder, "panoptic", split),
            json_path,
            missing_hint=CUSTOM_TREE.format(root=folder),
        )
        names.append(name)
    return names


def register_all(root):
    for split in ("train", "val"):
        register_synthetic_panoptic(
            f"synthetic_panoptic_{split}", os.path.join(root, "synthetic"), split
        )
        register_kitti_panoptic(
            f"kitti_panoptic_{split}", os.path.join(root, "kitti_panoptic"), split
        )
        vistas_root = os.path.join(root, "mapillary_vistas")
        register_mapillary_vistas(f"mapillary_vistas_panoptic_{split}", vistas_root, split, "v1.2")
        register_mapillary_vistas(
            f"mapillary_vistas_v2_panoptic_{split}", vistas_root, split, "v2.0"
        )
    register_custom_panoptic(os.path.join(root, "custom"))


register_all(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")))
