"""Any dataset in COCO-panoptic format: a json of images/annotations/categories + RGB id PNGs.

``register_coco_panoptic`` is the entry point for custom datasets; the synthetic, KITTI and
Mapillary Vistas registrations go through it too. Category ids become contiguous semantic
channels in the categories' order; stuff and thing channels are recorded explicitly in the
metadata (``stuff_channels``/``thing_channels``) so the model never guesses them.
"""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

EVALUATOR_TYPE = "efficientps_panoptic_seg"


class DatasetFormatError(ValueError):
    """The files on disk are not what the registration expects; the message names them."""


def panoptic_metadata(categories, *, ignore_label=255, label_divisor=1000):
    """detectron2 metadata for ``categories`` [{"id", "name", "isthing", "color"?}, ...].

    Channel c is ``categories[c]``; names and colours are listed for every channel in both
    thing_* and stuff_* fields (detectron2's Cityscapes-panoptic convention, which its
    Visualizer reads with category_id = channel).
    """
    if not categories:
        raise DatasetFormatError("no categories given")
    names = [c["name"] for c in categories]
    colors = [tuple(c.get("color") or _fallback_color(i)) for i, c in enumerate(categories)]
    things = {c["id"]: i for i, c in enumerate(categories) if c.get("isthing")}
    stuff = {c["id"]: i for i, c in enumerate(categories) if not c.get("isthing")}
    if len(things) + len(stuff) != len(categories):
        raise DatasetFormatError(f"duplicate category ids in {[c['id'] for c in categories]}")
    if ignore_label < len(categories):
        raise DatasetFormatError(
            f"ignore_label {ignore_label} collides with a class channel (there are "
            f"{len(categories)} classes)"
        )
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": things,
        "stuff_dataset_id_to_contiguous_id": stuff,
        "thing_channels": sorted(things.values()),
        "stuff_channels": sorted(stuff.values()),
        "ignore_label": ignore_label,
        "label_divisor": label_divisor,
        "evaluator_type": EVALUATOR_TYPE,
    }


def _fallback_color(i):
    # Deterministic, well-spread colours for datasets whose categories carry none.
    return ((i * 67 + 40) % 256, (i * 139 + 90) % 256, (i * 211 + 160) % 256)


def _index_images(image_root):
    index = {}
    for folder, _, files in os.walk(image_root):
        for name in files:
            index.setdefault(name, os.path.join(folder, name))
    return index


def load_coco_panoptic(image_root, panoptic_root, panoptic_json, categories=None):
    """Records in detectron2's format, segments' category_id mapped to semantic channels.

    Image files are looked up as ``image_root/file_name``, or by basename anywhere below
    ``image_root`` (Cityscapes keeps them in per-city folders).
    """
    content = _read_panoptic_json(panoptic_json)
    categories = categories or content.get("categories")
    if not categories:
        raise DatasetFormatError(f"{panoptic_json}: no 'categories' and none given")
    segment_converter = _SegmentConverter(categories, panoptic_json)
    image_finder = _ImageFinder(image_root, panoptic_json)
    annotations = {a["image_id"]: a for a in content["annotations"]}
    records = []
    for image in content["images"]:
        annotation = annotations.pop(image["id"], None)
        if annotation is None:
            raise DatasetFormatError(
                f"{panoptic_json}: image {image['id']!r} ({image['file_name']}) has no annotation"
            )
        record = {
            "file_name": image_finder(image["file_name"]),
            "image_id": image["id"],
            "pan_seg_file_name": os.path.join(panoptic_root, annotation["file_name"]),
            "segments_info": [
                segment_converter(s, annotation) for s in annotation["segments_info"]
            ],
        }
        # detectron2 checks the image against these when present; absent means "don't know".
        record.update({k: image[k] for k in ("height", "width") if image.get(k)})
        records.append(record)
    if annotations:
        logger.warning(
            f"{panoptic_json}: {len(annotations)} annotations refer to no listed image; skipped"
        )
    if not records:
        raise DatasetFormatError(f"{panoptic_json}: no images")
    return records


def _read_panoptic_json(panoptic_json):
    if not os.path.isfile(panoptic_json):
        raise FileNotFoundError(f"panoptic json not found: {panoptic_json}")
    with open(panoptic_json) as f:
        content = json.load(f)
    for key in ("images", "annotations"):
        if key not in content:
            raise DatasetFormatError(f"{panoptic_json}: no '{key}' list (not COCO-panoptic)")
    return content


class _ImageFinder:
    """``image_root/file_name``, else the file of that basename anywhere below ``image_root``
    (the tree is indexed once, on the first image not found directly)."""

    def __init__(self, image_root, panoptic_json):
        self.image_root, self.panoptic_json = image_root, panoptic_json
        self.index = None

    def __call__(self, file_name):
        path = os.path.join(self.image_root, file_name)
        if os.path.isfile(path):
            return path
        if self.index is None:
            self.index = _index_images(self.image_root)
        if file_name not in self.index:
            raise FileNotFoundError(
                f"{self.panoptic_json}: image {file_name!r} not found under {self.image_root}"
            )
        return self.index[file_name]


class _SegmentConverter:
    """A segments_info entry with its dataset category id replaced by the semantic channel."""

    def __init__(self, categories, panoptic_json):
        self.channel_of = {c["id"]: i for i, c in enumerate(categories)}
        self.isthing = {c["id"]: bool(c.get("isthing")) for c in categories}
        self.panoptic_json = panoptic_json

    def __call__(self, segment, annotation):
        category = segment["category_id"]
        if category not in self.channel_of:
            raise DatasetFormatError(
                f"{self.panoptic_json}: segment {segment['id']} of {annotation['file_name']} has "
                f"unknown category_id {category}"
            )
        return {
            "id": segment["id"],
            "category_id": self.channel_of[category],
            "iscrowd": int(segment.get("iscrowd", 0)),
            "isthing": self.isthing[category],
            "area": segment.get("area"),
            "bbox": segment.get("bbox"),
        }


def register_coco_panoptic(
    name,
    image_root,
    panoptic_root,
    panoptic_json,
    categories=None,
    *,
    ignore_label=255,
    label_divisor=1000,
    missing_hint="",
    check=None,
    **extra_metadata,
):
    """Register a COCO-panoptic dataset as ``name`` with full panoptic metadata.

    Args:
        categories: [{"id", "name", "isthing", "color"}] in channel order; None reads them from
            ``panoptic_json`` (which must then exist now).
        missing_hint: appended to the error when the files are missing (expected tree, command).
        check: optional callable run before loading (raises on inconsistent files).
        extra_metadata: more metadata fields (e.g. image size hints).
    """
    if categories is None:
        with open(panoptic_json) as f:
            categories = json.load(f).get("categories")
        if not categories:
            raise DatasetFormatError(f"{panoptic_json}: no 'categories'")
    categories = [dict(c) for c in categories]

    def load():
        for path in (image_root, panoptic_root, panoptic_json):
            if not os.path.exists(path):
                raise FileNotFoundError(f"dataset {name!r}: {path} not found.\n{missing_hint}")
        if check is not None:
            check()
        return load_coco_panoptic(image_root, panoptic_root, panoptic_json, categories)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        categories=categories,
        **panoptic_metadata(categories, ignore_label=ignore_label, label_divisor=label_divisor),
        **extra_metadata,
    )
    return MetadataCatalog.get(name)
