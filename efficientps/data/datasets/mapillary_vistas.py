"""Mapillary Vistas v1.2 (65 classes) and v2.0 (124 classes) panoptic registrations.

The class table is read from the dataset's own ``config_v1.2.json`` / ``config_v2.0.json``
("labels": [{name, readable, color, instances, evaluate}], list index = pixel value in
labels/*.png); panoptic category id = that index + 1 (the panoptic json's convention). The
loader checks the panoptic json's categories against it, so a different release fails loudly
instead of mislabeling. Ignore value = number of classes (65 for v1.2).
"""

import json
import os

from .coco_panoptic import DatasetFormatError, register_coco_panoptic

VERSIONS = {"v1.2": "panoptic_2018.json", "v2.0": "panoptic_2020.json"}
VISTAS_SPLITS = {"train": "training", "val": "validation"}
VISTAS_TREE = """\
{root}/
  config_{version}.json
  training/images/*.jpg     training/panoptic/*.png     training/panoptic/{json}
  validation/images/*.jpg   validation/panoptic/*.png   validation/panoptic/{json}
  (the v2.0 download nests these under training/{version}/ and validation/{version}/, images
  staying in training/images/: both layouts are found)"""


def vistas_categories(config_path):
    """Evaluated classes of a Vistas config file, as COCO-panoptic categories."""
    with open(config_path) as f:
        labels = json.load(f)["labels"]
    return [
        {
            "id": index + 1,
            "name": label.get("readable", label["name"]),
            "supercategory": label["name"],
            "color": list(label["color"]),
            "isthing": int(bool(label["instances"])),
        }
        for index, label in enumerate(labels)
        if label.get("evaluate", True)
    ]


def vistas_paths(root, split, version):
    folder = os.path.join(root, VISTAS_SPLITS[split])
    nested = os.path.join(folder, version)
    annotations = nested if os.path.isdir(os.path.join(nested, "panoptic")) else folder
    json_name = VERSIONS[version]
    panoptic_json = os.path.join(annotations, "panoptic", json_name)
    if not os.path.isfile(panoptic_json) and os.path.isfile(os.path.join(annotations, json_name)):
        panoptic_json = os.path.join(annotations, json_name)
    return os.path.join(folder, "images"), os.path.join(annotations, "panoptic"), panoptic_json


def check_categories_match(panoptic_json, categories):
    """The panoptic json's categories must be the config's (same ids, same names)."""
    with open(panoptic_json) as f:
        listed = json.load(f).get("categories", [])
    by_id = {c["id"]: c for c in categories}
    for category in listed:
        ours = by_id.get(category["id"])
        names = {category.get("name", "").lower(), category.get("supercategory", "").lower()}
        if ours is None or not names & {ours["name"].lower(), ours["supercategory"].lower()}:
            raise DatasetFormatError(
                f"{panoptic_json}: category {category} does not match the config's class "
                f"{ours} (expected panoptic id = config index + 1)"
            )


def register_mapillary_vistas(name, root, split, version="v1.2"):
    """Register Vistas ``version`` split ``split`` under ``root`` as ``name``.

    Without the config file (dataset not downloaded) only the paths are registered; loading
    or building a model from it then fails naming the expected tree.
    """
    image_root, panoptic_root, panoptic_json = vistas_paths(root, split, version)
    config_path = os.path.join(root, f"config_{version}.json")
    hint = VISTAS_TREE.format(root=root, version=version, json=VERSIONS[version])
    if not os.path.isfile(config_path):
        from detectron2.data import DatasetCatalog, MetadataCatalog

        def missing():
            raise FileNotFoundError(f"{name}: {config_path} not found. Expected\n{hint}")

        DatasetCatalog.register(name, missing)
        MetadataCatalog.get(name).set(
            image_root=image_root,
            panoptic_root=panoptic_root,
            panoptic_json=panoptic_json,
            missing_reason=f"{config_path} not found; expected\n{hint}",
        )
        return MetadataCatalog.get(name)
    categories = vistas_categories(config_path)
    return register_coco_panoptic(
        name,
        image_root,
        panoptic_root,
        panoptic_json,
        categories,
        ignore_label=len(categories),
        missing_hint=hint,
        check=lambda: check_categories_match(panoptic_json, categories),
        image_size_hint=(1024, 1024),
    )
