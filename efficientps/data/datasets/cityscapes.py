"""Cityscapes (and KITTI panoptic, which uses its classes): categories and registration helpers.

The built-in ``cityscapes_fine_panoptic_{train,val}`` are detectron2's and are not registered
again: their metadata already maps label ids to trainIds (= semantic channels), which is all
the model's class tables need. ``register_cityscapes_panoptic`` registers the same loader
under another name and root (for tests, or a second copy of the dataset).
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_panoptic import EVALUATOR_TYPE, panoptic_metadata

CITYSCAPES_TREE = """\
{root}/
  leftImg8bit/{{train,val}}/<city>/*_leftImg8bit.png
  gtFine/{{train,val}}/<city>/*_gtFine_{{instanceIds,labelIds,polygons}}.*
  gtFine/{{train,val}}/<city>/*_gtFine_labelTrainIds.png      (made by prepare_cityscapes.py)
  gtFine/cityscapes_panoptic_{{train,val}}/*_panoptic.png      (made by prepare_cityscapes.py)
  gtFine/cityscapes_panoptic_{{train,val}}.json                (made by prepare_cityscapes.py)"""


def cityscapes_categories():
    """The 19 evaluated Cityscapes classes in trainId order (channel = trainId), label ids as ids.

    Read from cityscapesscripts' own label table, not hard-coded here.
    """
    from cityscapesscripts.helpers.labels import labels

    evaluated = sorted(
        (label for label in labels if not label.ignoreInEval), key=lambda x: x.trainId
    )
    return [
        {
            "id": label.id,
            "name": label.name,
            "color": list(label.color),
            "isthing": int(label.hasInstances),
            "supercategory": label.category,
        }
        for label in evaluated
    ]


def register_cityscapes_panoptic(name, root, split):
    """Register detectron2's Cityscapes panoptic loader for ``root`` as ``name``."""
    from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}")
    gt_json = os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json")
    metadata = panoptic_metadata(cityscapes_categories())

    def load():
        if not os.path.isfile(gt_json):
            raise FileNotFoundError(
                f"{name}: {gt_json} not found. Expected the Cityscapes tree\n"
                + CITYSCAPES_TREE.format(root=root)
                + "\nMake the derived files with: "
                + f"python datasets/prepare_cityscapes.py --root {root}"
            )
        return load_cityscapes_panoptic(image_dir, gt_dir, gt_json, metadata)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_dir,
        panoptic_root=gt_dir,
        panoptic_json=gt_json,
        gt_dir=os.path.join(root, "gtFine", split),
        **dict(metadata, evaluator_type=EVALUATOR_TYPE),
    )
    return MetadataCatalog.get(name)
