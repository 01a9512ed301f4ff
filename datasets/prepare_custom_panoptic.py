#!/usr/bin/env python
"""Your own annotations -> a COCO-panoptic folder that efficientps registers as it is.

    python datasets/prepare_custom_panoptic.py --root $DETECTRON2_DATASETS/custom/NAME \
        --format coco|semantic-instance|instance-ids [--splits train val] [--classes FILE]

Inputs under --root (images matched to their labels by file stem):
  classes.yaml (or .json)                      the class table (--classes to point elsewhere)
  images/<split>/**/*.{png,jpg,jpeg}
  --format coco               annotations/instances_<split>.json (COCO instances: polygons or RLE,
                              e.g. a CVAT or labelme->COCO export) for the things, and
                              semantic/<split>/<stem>.png (class ids) for the stuff
  --format semantic-instance  semantic/<split>/<stem>.png (class ids) and
                              instances/<split>/<stem>.png (0 = no instance, else an id unique
                              in the image)
  --format instance-ids       instance_ids/<split>/<stem>_instanceIds.png (Cityscapes-style:
                              class * 1000 + instance for things, the class id elsewhere)
The class table: ``void`` (label values that mean unlabelled, optional) and ``classes``, each with
id, name, isthing and color, e.g. (YAML)
  void: [0]
  classes:
    - {id: 1, name: road, isthing: false, color: [128, 64, 128]}
    - {id: 2, name: car, isthing: true, color: [0, 0, 142]}
Thing-class pixels that belong to no instance become a crowd segment of their class (as
Cityscapes' groups): never instances, kept in the semantic targets.

Output: --root/panoptic/<split>/<stem>.png (COCO-panoptic id encoding) and
--root/panoptic_<split>.json (images, annotations, categories with isthing, ids and colours). A
split is written to a temporary folder and renamed at the end, so nothing is half-written; a
split already complete is skipped (--overwrite to redo it). Under $DETECTRON2_DATASETS/custom/NAME
it is registered as custom_NAME_<split> when efficientps is imported.
"""

import argparse
import glob
import json
import os
import shutil
import sys
from collections import Counter

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from efficientps_pq.panoptic_ids import id_to_rgb

FORMATS = ("coco", "semantic-instance", "instance-ids")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LABEL_DIVISOR = 1000


class CustomDatasetError(ValueError):
    """Bad input: the message names the file and the value."""


# ---- the class table ---------------------------------------------------------------------------


def read_class_table(path):
    """{"void": set of label values, "classes": {id: {"id", "name", "isthing", "color"}}}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class table {path} not found (see this script's docstring)")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                content = yaml.safe_load(f)
            else:
                content = json.load(f)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        kind = "YAML" if path.endswith((".yaml", ".yml")) else "JSON"
        raise CustomDatasetError(f"{path}: not valid {kind} ({error})") from error
    if not isinstance(content, dict) or not isinstance(content.get("classes"), list):
        raise CustomDatasetError(f"{path}: expected a mapping with a 'classes' list")
    classes = {}
    for entry in content["classes"]:
        if not isinstance(entry, dict):
            raise CustomDatasetError(f"{path}: class {entry!r:.60} is not a mapping")
        missing = {"id", "name", "isthing", "color"} - set(entry)
        if missing:
            raise CustomDatasetError(f"{path}: class {entry} lacks {sorted(missing)}")
        class_id = entry["id"]
        if not isinstance(class_id, int) or not 0 <= class_id < LABEL_DIVISOR:
            raise CustomDatasetError(f"{path}: class id {class_id!r} is not an int in 0..999")
        if class_id in classes:
            raise CustomDatasetError(f"{path}: class id {class_id} is listed twice")
        color = entry["color"]
        if (
            not isinstance(color, list)
            or len(color) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        ):
            raise CustomDatasetError(f"{path}: class {class_id} color {color} is not 3 bytes")
        classes[class_id] = {
            "id": class_id,
            "name": str(entry["name"]),
            "isthing": int(bool(entry["isthing"])),
            "color": list(color),
        }
    void = content.get("void") or []
    if not isinstance(void, list) or not all(isinstance(v, int) for v in void):
        raise CustomDatasetError(f"{path}: 'void' must be a list of label values, got {void!r:.60}")
    void = set(void)
    if void & set(classes):
        raise CustomDatasetError(f"{path}: ids {sorted(void & set(classes))} are void and classes")
    if not classes:
        raise CustomDatasetError(f"{path}: no classes")
    return {"void": void, "classes": classes}


# ---- reading the inputs ------------------------------------------------------------------------


LABEL_MODES = {"L": "8-bit grey", "P": "palette", "I;16": "16-bit grey", "I": "32-bit grey"}


def read_label_png(path):
    """Label values of a one-channel PNG: 8- or 16-bit grey, or palette (read as its indices,
    which is what labelling tools such as CVAT, labelme and Label Studio write)."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in LABEL_MODES and not mode.startswith("I;16"):
                raise CustomDatasetError(
                    f"{path}: a {mode} image; expected a one-channel label PNG "
                    f"({', '.join(LABEL_MODES.values())}) of class or instance ids"
                )
            labels = np.asarray(image)
    except CustomDatasetError:
        raise
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for damaged files
        raise CustomDatasetError(f"cannot read {path}: expected a label PNG ({error})") from error
    return labels.astype(np.int64)


def image_size(path):
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CustomDatasetError(f"cannot read image {path}")
    return image.shape[:2]


def find_images(root, split):
    folder = os.path.join(root, "images", split)
    paths = [
        p
        for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if p.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not paths:
        raise FileNotFoundError(f"no images under {folder} (expected images/<split>/*.png|jpg)")
    return sorted(paths)


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def check_size(label_path, labels, image_path, size):
    if labels.shape[:2] != tuple(size):
        raise CustomDatasetError(
            f"{label_path} is {labels.shape[1]}x{labels.shape[0]} but its image {image_path} "
            f"is {size[1]}x{size[0]} (width x height): they must be the same size"
        )


class Segments:
    """Builds one image's panoptic id map and segments_info from per-pixel assignments."""

    def __init__(self, size, table, source):
        self.ids = np.zeros(size, np.int32)
        self.segments = []
        self.table = table
        self.source = source

    def category(self, class_id, what, source=None):
        if class_id not in self.table["classes"]:
            raise CustomDatasetError(
                f"{source or self.source}: {what} {class_id} is not in the class table (nor void)"
            )
        return self.table["classes"][class_id]

    def add(self, mask, class_id, iscrowd=False):
        if not mask.any():
            return
        segment_id = len(self.segments) + 1
        self.ids[mask] = segment_id
        ys, xs = np.nonzero(mask)
        self.segments.append(
            {
                "id": segment_id,
                "category_id": int(class_id),
                "iscrowd": int(iscrowd),
                "area": int(mask.sum()),
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
            }
        )

    def add_semantic(self, semantic, covered, source=None):
        """Stuff classes as one segment each; thing pixels outside instances as crowd.
        ``source``: the semantic PNG, named in errors about its values."""
        for value in np.unique(semantic[~covered]).tolist():
            if value in self.table["void"]:
                continue
            category = self.category(value, "class id", source)
            self.add((semantic == value) & ~covered, value, iscrowd=category["isthing"])


def convert_semantic_instance(semantic, instances, table, source, semantic_source=None):
    """``source``: the instance PNG (named in errors about instances); ``semantic_source``: the
    semantic PNG (named in errors about class values)."""
    segments = Segments(semantic.shape, table, semantic_source or source)
    covered = np.zeros(semantic.shape, bool)
    for instance in np.unique(instances).tolist():
        if instance == 0:
            continue
        mask = instances == instance
        values = set(np.unique(semantic[mask]).tolist()) - table["void"]
        if len(values) != 1:
            raise CustomDatasetError(
                f"{source}: instance {instance} covers classes {sorted(values)} in the "
                "semantic PNG; an instance has exactly one (thing) class"
            )
        class_id = values.pop()
        if not segments.category(class_id, "class id")["isthing"]:
            raise CustomDatasetError(
                f"{source}: instance {instance} has class {class_id} (in {segments.source}), "
                "a stuff class "
                "(isthing false in the class table): stuff has no instances"
            )
        mask &= ~np.isin(semantic, list(table["void"]))
        segments.add(mask, class_id)
        covered |= mask
    segments.add_semantic(semantic, covered)
    return segments


def convert_instance_ids(instance_ids, table, source):
    segments = Segments(instance_ids.shape, table, source)
    covered = instance_ids >= LABEL_DIVISOR
    for value in np.unique(instance_ids[covered]).tolist():
        class_id = value // LABEL_DIVISOR
        if not segments.category(class_id, f"class id (of instance {value})")["isthing"]:
            raise CustomDatasetError(
                f"{source}: instance {value} has class {class_id}, a stuff class (isthing false "
                "in the class table): stuff has no instances"
            )
        segments.add(instance_ids == value, class_id)
    segments.add_semantic(instance_ids, covered)
    return segments


def rle_counts(counts):
    """Run lengths of a COCO RLE: a list of ints (uncompressed) or COCO's compressed string
    (each count in 5-bit groups, the 6th bit saying another group follows, counts after the
    second stored as differences to the one two before)."""
    if isinstance(counts, list):
        return counts
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise ValueError(f"'counts' is a {type(counts).__name__}")
    runs, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the compressed counts end inside a number")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {counts[position]!r} is not in COCO's RLE alphabet")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # negative difference
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_mask(segmentation, height, width):
    """Decode a COCO RLE after checking its runs cover the image exactly (pycocotools' decoder
    writes past its buffer when they add up to more)."""
    runs = rle_counts(segmentation["counts"])
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs):
        raise ValueError("its run lengths must be non-negative integers")
    if sum(runs) != height * width:
        raise ValueError(f"its runs cover {sum(runs)} pixels, the image has {height * width}")
    values = np.arange(len(runs)) % 2  # runs alternate background, mask, background, ...
    return np.repeat(values.astype(bool), runs).reshape(width, height).T  # column-major


def polygon_mask(polygons, height, width, where):
    from pycocotools import mask as mask_utils

    for polygon in polygons:
        if (
            not isinstance(polygon, list)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon)
            or len(polygon) % 2
            or len(polygon) < 6
        ):
            raise CustomDatasetError(
                f"{where}: a polygon must be a flat list [x1, y1, x2, y2, ...] of at least "
                f"3 points (an even count of numbers); got {str(polygon)[:80]}"
            )
        xs, ys = np.asarray(polygon[0::2], float), np.asarray(polygon[1::2], float)
        # pycocotools walks every edge pixel by pixel: a point far outside is an error, not
        # an allocation of its length.
        if not (
            np.isfinite(xs).all()
            and np.isfinite(ys).all()
            and (np.abs(xs - width / 2) <= width).all()
            and (np.abs(ys - height / 2) <= height).all()
        ):
            raise CustomDatasetError(
                f"{where}: a polygon point lies far outside the {width}x{height} image: "
                f"{str(polygon)[:80]}"
            )
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.decode(rle).astype(bool)


def coco_mask(annotation, height, width, source):
    """The bool mask of one COCO annotation (polygons or RLE), checked before decoding.

    pycocotools drops a polygon's odd last coordinate and broadcasts an RLE of another size
    without a word: both are refused here, naming the annotation.
    """
    where = f"{source}: annotation {annotation.get('id')}"
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):  # polygons
        if not segmentation:
            raise CustomDatasetError(
                f"{where} has an empty 'segmentation' (a box-only export?); a thing needs its "
                "mask as polygons or RLE"
            )
        return polygon_mask(segmentation, height, width, where)
    if isinstance(segmentation, dict) and {"size", "counts"} <= set(segmentation):
        if segmentation["size"] != [height, width]:
            raise CustomDatasetError(
                f"{where}: its RLE 'size' {segmentation['size']} is not the image's "
                f"[height, width] [{height}, {width}]"
            )
        try:
            return rle_mask(segmentation, height, width)
        except ValueError as error:
            raise CustomDatasetError(f"{where}: cannot decode its RLE: {error}") from error
    raise CustomDatasetError(
        f"{where}: 'segmentation' must be polygons (a list of lists) or an RLE with 'size' "
        f"and 'counts'; got {str(segmentation)[:80]}"
    )


def convert_coco(semantic, annotations, table, source, semantic_source=None):
    """Things from ``annotations`` (``source``: their json and image), stuff from ``semantic``
    (``semantic_source``: its PNG). An instance takes its pixels whatever the semantic PNG says
    there; the semantic PNG gives the rest."""
    segments = Segments(semantic.shape, table, source)
    height, width = semantic.shape
    owner = np.full(semantic.shape, -1, np.int64)  # index of the annotation that has the pixel
    for index, annotation in enumerate(annotations):
        mask = coco_mask(annotation, height, width, source)
        class_id = annotation.get("category_id")
        if not segments.category(class_id, "category_id")["isthing"]:
            raise CustomDatasetError(
                f"{source}: annotation {annotation.get('id')} has category {class_id}, a stuff "
                "class (isthing false in the class table): stuff comes from the semantic PNGs"
            )
        overlap = mask & (owner >= 0)
        if overlap.any():
            other = annotations[int(owner[overlap][0])].get("id")
            raise CustomDatasetError(
                f"{source}: annotation {annotation.get('id')} overlaps annotation {other} on "
                f"{int(overlap.sum())} pixels; thing instances must not overlap"
            )
        segments.add(mask, class_id, iscrowd=bool(annotation.get("iscrowd", 0)))
        owner[mask] = index
    segments.add_semantic(semantic, owner >= 0, semantic_source)
    return segments


# ---- one split -----------------------------------------------------------------------------------


def label_paths(root, split, fmt):
    """{image stem: label path(s)} of the format's inputs."""
    if fmt == "instance-ids":
        pattern = os.path.join(root, "instance_ids", split, "**", "*_instanceIds.png")
        return {
            os.path.basename(p)[: -len("_instanceIds.png")]: p
            for p in glob.glob(pattern, recursive=True)
        }
    semantic_root = os.path.join(root, "semantic", split)
    semantic = {
        stem(p): p for p in glob.glob(os.path.join(semantic_root, "**", "*.png"), recursive=True)
    }
    if fmt == "coco":
        return semantic
    instances = os.path.join(root, "instances", split)
    return {
        name: (path, os.path.join(instances, os.path.relpath(path, semantic_root)))
        for name, path in semantic.items()
    }


def _is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value):
    return _is_integer(value) or isinstance(value, str)


def coco_annotations_by_stem(root, split, table):
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (COCO instances json of the {split} split)")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CustomDatasetError(f"{path}: not a JSON file ({error})") from error
    if not isinstance(content, dict):
        raise CustomDatasetError(
            f"{path}: expected a COCO instances object, got JSON {content!r:.40}"
        )
    for key in ("images", "annotations"):
        if not isinstance(content.get(key), list):
            raise CustomDatasetError(f"{path}: no '{key}' list (not a COCO instances json)")
    by_image = {}
    for image in content["images"]:
        if not isinstance(image, dict) or not {"id", "file_name"} <= set(image):
            raise CustomDatasetError(f"{path}: an entry of 'images' lacks 'id' or 'file_name'")
        if not _is_id(image["id"]) or not isinstance(image["file_name"], str):
            raise CustomDatasetError(
                f"{path}: image {image['id']!r:.40}: expected an integer or string 'id' and a "
                "string 'file_name'"
            )
        by_image[image["id"]] = stem(image["file_name"])
    grouped = {}
    for annotation in content["annotations"]:
        if not isinstance(annotation, dict):
            raise CustomDatasetError(f"{path}: an annotation is {annotation!r:.40}, not an object")
        missing = {"image_id", "category_id", "segmentation"} - set(annotation)
        if missing:
            raise CustomDatasetError(
                f"{path}: annotation {annotation.get('id')} lacks {sorted(missing)}"
            )
        for key, valid in (("image_id", _is_id), ("category_id", _is_integer),
                           ("iscrowd", lambda v: v in (0, 1))):  # fmt: skip
            if key in annotation and not valid(annotation[key]):
                raise CustomDatasetError(
                    f"{path}: annotation {annotation.get('id')}: {key} {annotation[key]!r:.40} "
                    f"is not {'0 or 1' if key == 'iscrowd' else 'an integer'}"
                )
        if annotation["image_id"] not in by_image:
            raise CustomDatasetError(
                f"{path}: annotation {annotation.get('id')} refers to image "
                f"{annotation['image_id']}, which is not in 'images'"
            )
        grouped.setdefault(by_image[annotation["image_id"]], []).append(annotation)
    for name in set(by_image.values()):
        grouped.setdefault(name, [])  # every listed image, annotated or not, must exist
    return grouped, path


def convert_image(image_path, size, fmt, labels, coco, table):
    """(panoptic ids, segments) of one image of ``size`` (H, W); None: an all-void image."""
    name = stem(image_path)
    if fmt == "instance-ids":
        if labels is None:
            return None
        instance_ids = read_label_png(labels)
        check_size(labels, instance_ids, image_path, size)
        return convert_instance_ids(instance_ids, table, labels)
    if fmt == "semantic-instance":
        if labels is None:
            return None
        semantic_path, instance_path = labels
        semantic = read_label_png(semantic_path)
        check_size(semantic_path, semantic, image_path, size)
        if not os.path.isfile(instance_path):
            raise FileNotFoundError(f"{instance_path} not found (the instances of {semantic_path})")
        instances = read_label_png(instance_path)
        check_size(instance_path, instances, image_path, size)
        return convert_semantic_instance(semantic, instances, table, instance_path, semantic_path)
    annotations, json_path = coco
    things = annotations.get(name, [])
    if labels is None and not things:
        return None
    if labels is None:  # things only: the rest is void (-1, never a class id)
        semantic = np.full(size, -1, np.int64)
        table = dict(table, void=table["void"] | {-1})
    else:
        semantic = read_label_png(labels)
        check_size(labels, semantic, image_path, size)
    return convert_coco(semantic, things, table, f"{json_path} ({name})", labels)


def write_ids_png(path, ids):
    """COCO-panoptic PNG (efficientps_pq's id encoding); fails if it cannot be written."""
    if not cv2.imwrite(path, id_to_rgb(ids)[..., ::-1]):
        raise OSError(f"cannot write {path}")


class PendingSplit:
    """A converted split in a temporary folder: ``commit`` puts it in place, ``discard`` drops
    it. Every split is converted before any is committed, so a bad input writes nothing."""

    def __init__(self, root, split, temporary, content, summary):
        self.root, self.split, self.temporary = root, split, temporary
        self.content, self.summary = content, summary

    def commit(self):
        final_dir = os.path.join(self.root, "panoptic", self.split)
        json_path = os.path.join(self.root, f"panoptic_{self.split}.json")
        with open(json_path + ".incomplete", "w") as f:
            json.dump(self.content, f)
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(self.temporary, final_dir)
        os.replace(json_path + ".incomplete", json_path)

    def discard(self):
        shutil.rmtree(self.temporary, ignore_errors=True)


def missing_images(images, labels, coco):
    """Stems that the labels or the COCO json name but images/<split>/ lacks."""
    named = set(labels) | (set(coco[0]) if coco else set())
    return sorted(named - {stem(p) for p in images})


def convert_split(root, split, fmt, table, progress=True, skip_missing=False):
    """Convert one split into a temporary folder under root/panoptic; a ``PendingSplit``."""
    images = find_images(root, split)
    labels = label_paths(root, split, fmt)
    coco = coco_annotations_by_stem(root, split, table) if fmt == "coco" else None
    missing = missing_images(images, labels, coco)
    if missing and not skip_missing:
        raise CustomDatasetError(
            f"{root}/images/{split}/ lacks {len(missing)} image(s) that the labels name: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
            "(--skip-missing converts the split without them and lists them)"
        )
    temporary = os.path.join(root, "panoptic", f".{split}.incomplete")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    records, annotations, counts = [], [], Counter()
    try:
        for index, image_path in enumerate(tqdm(images, desc=f"{split}", disable=not progress)):
            name = stem(image_path)
            height, width = image_size(image_path)
            converted = convert_image(
                image_path, (height, width), fmt, labels.get(name), coco, table
            )
            if converted is None:
                counts["all-void images (no annotations)"] += 1
                ids, segments = np.zeros((height, width), np.int32), []
            else:
                ids, segments = converted.ids, converted.segments
            write_ids_png(os.path.join(temporary, f"{name}.png"), ids)
            file_name = os.path.relpath(image_path, os.path.join(root, "images", split))
            records.append({"id": index, "file_name": file_name, "height": height, "width": width})
            annotations.append(
                {"image_id": index, "file_name": f"{name}.png", "segments_info": segments}
            )
            counts["segments"] += len(segments)
            counts["crowd segments"] += sum(s["iscrowd"] for s in segments)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    categories = [table["classes"][k] for k in sorted(table["classes"])]
    counts["images"] = len(images)
    if missing:
        counts["labelled images missing, skipped"] = len(missing)
        print(
            f"warning: {split}: {len(missing)} labelled image(s) missing under images/{split}/, "
            f"converted without them: {', '.join(missing)}",
            file=sys.stderr,
        )
    content = {"images": records, "annotations": annotations, "categories": categories}
    return PendingSplit(root, split, temporary, content, dict(counts))


def split_complete(root, split):
    json_path = os.path.join(root, f"panoptic_{split}.json")
    if not os.path.isfile(json_path):
        return False
    with open(json_path) as f:
        annotations = json.load(f)["annotations"]
    folder = os.path.join(root, "panoptic", split)
    return all(os.path.isfile(os.path.join(folder, a["file_name"])) for a in annotations)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the dataset folder (see the docstring)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--classes", help="the class table (default: ROOT/classes.yaml or .json)")
    parser.add_argument("--overwrite", action="store_true", help="redo complete splits")
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="convert without labelled images whose image file is missing (listed); default: error",
    )
    args = parser.parse_args(argv)
    classes = args.classes or next(
        (
            os.path.join(args.root, name)
            for name in ("classes.yaml", "classes.yml", "classes.json")
            if os.path.isfile(os.path.join(args.root, name))
        ),
        os.path.join(args.root, "classes.yaml"),
    )
    pending = []
    try:
        table = read_class_table(classes)
        todo = [s for s in args.splits if args.overwrite or not split_complete(args.root, s)]
        for split in sorted(set(args.splits) - set(todo), key=args.splits.index):
            print(f"{split}: {args.root}/panoptic_{split}.json is complete, skipped")
        for split in todo:  # every split's images exist before any work
            find_images(args.root, split)
        for split in todo:
            pending.append(
                convert_split(args.root, split, args.format, table, True, args.skip_missing)
            )
    except (OSError, ValueError) as e:
        for converted in pending:
            converted.discard()
        print(f"error: {e}", file=sys.stderr)
        return 1
    for converted in pending:
        converted.commit()
        summary = ", ".join(f"{v} {k}" for k, v in converted.summary.items())
        print(f"{converted.split}: {summary}")
    things = sum(c["isthing"] for c in table["classes"].values())
    print(
        f"{args.root}: MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(table['classes'])}, "
        f"MODEL.ROI_HEADS.NUM_CLASSES {things}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
