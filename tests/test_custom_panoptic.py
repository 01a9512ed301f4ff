"""datasets/prepare_custom_panoptic.py: your own annotations -> a COCO-panoptic folder.

The inputs are made by third-party code, not by the converter's helpers: pycocotools encodes the
COCO polygons and RLE, cityscapesscripts draws the *_instanceIds.png from polygons.
"""

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from efficientps.data.datasets import register_custom_panoptic
from efficientps_pq import read_panoptic_png

from .dataset_trees import load_script, random_image
from .helpers import TRAIN_NET

CLASSES = {
    "void": [0],
    "classes": [
        {"id": 1, "name": "road", "isthing": False, "color": [128, 64, 128]},
        {"id": 2, "name": "sky", "isthing": False, "color": [70, 130, 180]},
        {"id": 3, "name": "car", "isthing": True, "color": [0, 0, 142]},
        {"id": 4, "name": "person", "isthing": True, "color": [220, 20, 60]},
    ],
}


@pytest.fixture(scope="module")
def converter():
    return load_script("prepare_custom_panoptic")


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


def dataset_root(tmp_path, name="mine"):
    root = tmp_path / "custom" / name
    root.mkdir(parents=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return root


def converted(root, split="train"):
    with open(root / f"panoptic_{split}.json") as f:
        content = json.load(f)
    return content, {a["file_name"]: a for a in content["annotations"]}


def test_hand_checked_4x6_semantic_and_instance_pngs(tmp_path, converter, capsys):
    root = dataset_root(tmp_path)
    semantic = np.array(
        [[1, 1, 1, 2, 2, 2],
         [1, 3, 3, 2, 0, 2],
         [1, 3, 3, 4, 4, 2],
         [1, 1, 3, 4, 4, 4]], np.uint8)  # fmt: skip
    instances = np.array(
        [[0, 0, 0, 0, 0, 0],
         [0, 5, 5, 0, 0, 0],
         [0, 5, 5, 7, 7, 0],
         [0, 0, 0, 7, 7, 0]], np.uint8)  # fmt: skip
    write_png(root / "semantic" / "train" / "a.png", semantic)
    write_png(root / "instances" / "train" / "a.png", instances)
    random_image(root / "images" / "train" / "a.jpg", 4, 6, 0)
    code = converter.main(["--root", str(root), "--format", "semantic-instance", "--splits",
                           "train"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    content, annotations = converted(root)
    assert [c["id"] for c in content["categories"]] == [1, 2, 3, 4]
    assert [c["isthing"] for c in content["categories"]] == [0, 0, 1, 1]
    assert content["images"] == [{"id": 0, "file_name": "a.jpg", "height": 4, "width": 6}]
    segments = annotations["a.png"]["segments_info"]
    # The two instances, then road, sky, and the thing pixels outside instances as crowds.
    assert [(s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in segments] == [
        (1, 3, 0, 4), (2, 4, 0, 4), (3, 1, 0, 7), (4, 2, 0, 6), (5, 3, 1, 1), (6, 4, 1, 1),
    ]  # fmt: skip
    assert segments[0]["bbox"] == [1, 1, 2, 2] and segments[1]["bbox"] == [3, 2, 2, 2]
    ids = read_panoptic_png(str(root / "panoptic" / "train" / "a.png"))
    assert ids.tolist() == [
        [3, 3, 3, 4, 4, 4],
        [3, 1, 1, 4, 0, 4],
        [3, 1, 1, 2, 2, 4],
        [3, 3, 5, 2, 2, 6],
    ]
    # Registered as it is, under $DETECTRON2_DATASETS/custom/<NAME>.
    names = register_custom_panoptic(str(tmp_path / "custom"))
    assert "custom_mine_train" in names
    record = DatasetCatalog.get("custom_mine_train")[0]
    assert record["file_name"].endswith("a.jpg")
    assert MetadataCatalog.get("custom_mine_train").thing_classes[2:] == ["car", "person"]


def coco_tree(root, pycocotools_mask):
    """Two 40x64 images: polygons and RLE things over semantic stuff; a third unannotated."""
    images, annotations = [], []
    for index, name in enumerate(["p", "r", "empty"]):
        random_image(root / "images" / "train" / f"{name}.png", 40, 64, index)
        images.append({"id": 10 + index, "file_name": f"{name}.png", "height": 40, "width": 64})
        if name == "empty":
            continue
        semantic = np.full((40, 64), 1, np.uint8)
        semantic[:15] = 2
        write_png(root / "semantic" / "train" / f"{name}.png", semantic)
    annotations.append({  # a car as a polygon (a triangle and a box, in one annotation)
        "id": 100, "image_id": 10, "category_id": 3, "iscrowd": 0,
        "segmentation": [[5, 20, 25, 20, 15, 35], [30, 5, 40, 5, 40, 12, 30, 12]],
    })  # fmt: skip
    mask = np.zeros((40, 64), np.uint8, order="F")
    mask[18:30, 40:50] = 1
    rle = pycocotools_mask.encode(mask)
    rle["counts"] = rle["counts"].decode()  # as COCO json stores compressed RLE
    annotations.append(
        {"id": 101, "image_id": 11, "category_id": 4, "iscrowd": 0, "segmentation": rle}
    )
    crowd = np.zeros((40, 64), np.uint8, order="F")
    crowd[2:8, 2:20] = 1
    crowd_rle = pycocotools_mask.encode(crowd)
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    annotations.append(
        {"id": 102, "image_id": 11, "category_id": 3, "iscrowd": 1, "segmentation": crowd_rle}
    )
    path = root / "annotations" / "instances_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return annotations


def test_coco_polygons_and_rle_over_semantic_stuff(tmp_path, converter, capsys):
    from pycocotools import mask as pycocotools_mask

    root = dataset_root(tmp_path)
    annotations = coco_tree(root, pycocotools_mask)
    assert converter.main(["--root", str(root), "--format", "coco", "--splits", "train"]) == 0
    printed = capsys.readouterr().out
    assert "1 all-void images" in printed and "3 images" in printed
    _, by_file = converted(root)
    polygon = pycocotools_mask.merge(
        pycocotools_mask.frPyObjects(annotations[0]["segmentation"], 40, 64)
    )
    expected = pycocotools_mask.decode(polygon).astype(bool)
    ids = read_panoptic_png(str(root / "panoptic" / "train" / "p.png"))
    car = next(s for s in by_file["p.png"]["segments_info"] if s["category_id"] == 3)
    assert (ids == car["id"]).tolist() == expected.tolist()
    assert car["area"] == int(pycocotools_mask.area(polygon))
    segments = by_file["r.png"]["segments_info"]
    person = next(s for s in segments if s["category_id"] == 4)
    assert person["area"] == 120 and person["bbox"] == [40, 18, 10, 12] and not person["iscrowd"]
    assert next(s for s in segments if s["category_id"] == 3)["iscrowd"] == 1
    assert by_file["empty.png"]["segments_info"] == []
    assert not read_panoptic_png(str(root / "panoptic" / "train" / "empty.png")).any()


def test_cityscapes_style_instance_ids_with_the_users_class_table(tmp_path, converter):
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

    root = dataset_root(tmp_path)
    table = {"void": [0, 1], "classes": [  # Cityscapes label ids of the classes used here
        {"id": 7, "name": "road", "isthing": False, "color": [128, 64, 128]},
        {"id": 23, "name": "sky", "isthing": False, "color": [70, 130, 180]},
        {"id": 26, "name": "car", "isthing": True, "color": [0, 0, 142]},
    ]}  # fmt: skip
    (root / "classes.yaml").write_text(yaml.safe_dump(table))
    polygons = {"imgHeight": 32, "imgWidth": 48, "objects": [
        {"label": "sky", "polygon": [[0, 0], [47, 0], [47, 15], [0, 15]]},
        {"label": "road", "polygon": [[0, 15], [47, 15], [47, 31], [0, 31]]},
        {"label": "car", "polygon": [[5, 10], [20, 10], [20, 25], [5, 25]]},
        {"label": "car", "polygon": [[25, 12], [40, 12], [40, 28], [25, 28]]},
        {"label": "cargroup", "polygon": [[42, 20], [47, 20], [47, 26], [42, 26]]},
        {"label": "ego vehicle", "polygon": [[0, 29], [47, 29], [47, 31], [0, 31]]},
    ]}  # fmt: skip
    polygon_path = tmp_path / "x_gtFine_polygons.json"
    polygon_path.write_text(json.dumps(polygons))
    annotation = Annotation()
    annotation.fromJsonFile(str(polygon_path))
    instance_ids = np.asarray(createInstanceImage(annotation, "ids"), np.uint16)
    write_png(root / "instance_ids" / "val" / "x_instanceIds.png", instance_ids)
    random_image(root / "images" / "val" / "x.png", 32, 48, 0)
    assert converter.main(["--root", str(root), "--format", "instance-ids", "--splits", "val"]) == 0
    _, by_file = converted(root, "val")
    segments = by_file["x.png"]["segments_info"]
    kinds = sorted((s["category_id"], s["iscrowd"]) for s in segments)
    assert kinds == [(7, 0), (23, 0), (26, 0), (26, 0), (26, 1)]
    ids = read_panoptic_png(str(root / "panoptic" / "val" / "x.png"))
    for s in segments:
        assert (ids == s["id"]).sum() == s["area"]
    assert not ids[30].any()  # the ego vehicle is void


@pytest.mark.parametrize(
    "damage, message",
    [
        ("unknown class", r"semantic/train/a.png: class id 9 is not in the class table"),
        ("stuff as thing", r"instances/train/a.png: instance 5 has class 1 .*, a stuff class"),
        ("size", r"semantic/train/a.png is 6x4 but its image .*a.jpg is 7x4"),
    ],
)
def test_bad_inputs_name_the_file_and_value_and_write_nothing(
    tmp_path, converter, capsys, damage, message
):
    root = dataset_root(tmp_path)
    semantic = np.ones((4, 6), np.uint8)
    instances = np.zeros((4, 6), np.uint8)
    semantic[1:3, 1:3] = 3
    instances[1:3, 1:3] = 5
    if damage == "unknown class":
        semantic[0, 0] = 9
    if damage == "stuff as thing":
        semantic[1:3, 1:3] = 1
    write_png(root / "semantic" / "train" / "a.png", semantic)
    write_png(root / "instances" / "train" / "a.png", instances)
    random_image(root / "images" / "train" / "a.jpg", 4, 7 if damage == "size" else 6, 0)
    code = converter.main(["--root", str(root), "--format", "semantic-instance", "--splits",
                           "train"])  # fmt: skip
    assert code == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (root / "panoptic_train.json").exists()
    assert not (root / "panoptic" / "train").exists()
    assert os.listdir(root / "panoptic") == []  # the temporary folder is gone too


def test_overlapping_coco_instances_and_bad_class_tables_fail_clearly(tmp_path, converter, capsys):
    from pycocotools import mask as pycocotools_mask

    root = dataset_root(tmp_path)
    annotations = coco_tree(root, pycocotools_mask)
    annotations.append(dict(annotations[0], id=103))  # the same car twice
    path = root / "annotations" / "instances_train.json"
    content = json.loads(path.read_text())
    content["annotations"] = annotations
    path.write_text(json.dumps(content))
    assert converter.main(["--root", str(root), "--format", "coco", "--splits", "train"]) == 1
    assert "annotation 103 overlaps annotation 100 on" in capsys.readouterr().err
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [{"id": 1, "name": "x"}]}))
    assert converter.main(["--root", str(root), "--format", "coco"]) == 1
    assert "classes.yaml: class {" in capsys.readouterr().err


@pytest.mark.slow
def test_converted_folder_trains_and_evaluates_with_train_net(tmp_path, converter):
    from pycocotools import mask as pycocotools_mask

    datasets = tmp_path / "d2"
    root = datasets / "custom" / "mine"
    root.mkdir(parents=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    coco_tree(root, pycocotools_mask)
    for split in ("val",):  # the val split: the same scenes as instance/semantic PNGs
        for name in ("p", "r"):
            random_image(root / "images" / split / f"{name}.png", 40, 64, 5)
            semantic = np.full((40, 64), 1, np.uint8)
            semantic[:15] = 2
            semantic[20:30, 10:30] = 3
            instances = np.zeros((40, 64), np.uint8)
            instances[20:30, 10:30] = 1
            write_png(root / "semantic" / split / f"{name}.png", semantic)
            write_png(root / "instances" / split / f"{name}.png", instances)
    assert converter.main(["--root", str(root), "--format", "coco", "--splits", "train"]) == 0
    assert converter.main(["--root", str(root), "--format", "semantic-instance", "--splits",
                           "val"]) == 0  # fmt: skip
    output = tmp_path / "out"
    command = [
        sys.executable, TRAIN_NET, "--config-file",
        str(TRAIN_NET).replace("train_net.py", "configs/demo/efficientps_synthetic_cpu.yaml"),
        "DATASETS.TRAIN", "('custom_mine_train',)", "DATASETS.TEST", "('custom_mine_val',)",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
        "INPUT.CROP.SIZE", "[32, 64]", "INPUT.MIN_SIZE_TRAIN", "(40,)", "INPUT.MAX_SIZE_TRAIN",
        "64", "INPUT.MIN_SIZE_TEST", "40", "INPUT.MAX_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "OUTPUT_DIR", str(output),
    ]  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((output / "inference" / "custom_mine_val" / "results.json").read_text())
    assert set(results) >= {"panoptic_seg", "sem_seg"}
    assert 0 <= results["panoptic_seg"]["PQ"] <= 100


def run_coco(converter, root, *extra):
    return converter.main(["--root", str(root), "--format", "coco", "--splits", "train", *extra])


def assert_nothing_written(root):
    assert not (root / "panoptic_train.json").exists()
    assert not (root / "panoptic_val.json").exists()
    assert not (root / "panoptic").exists() or os.listdir(root / "panoptic") == []


def rewrite_annotations(root, change):
    path = root / "annotations" / "instances_train.json"
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def uncompressed_rle(mask):
    """COCO's uncompressed RLE (column-major run lengths, starting with zeros)."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = pixel, 1
    runs.append(count)
    return {"size": list(mask.shape), "counts": runs}


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "odd polygon",
            r"instances_train.json \(p\): annotation 100: a polygon must be a flat list",
        ),
        ("two-point polygon", r"annotation 100: a polygon must be .* at least 3 points"),
        ("empty segmentation", r"annotation 100 has an empty 'segmentation' \(a box-only export"),
        ("rle size", r"annotation 101: its RLE 'size' \[48, 80\] is not the image's .* \[40, 64\]"),
        ("uncompressed rle size", r"annotation 101: its RLE 'size' \[48, 80\] is not"),
        ("unknown semantic value", r"semantic/train/r.png: class id 9 is not in the class table"),
        ("not json", r"instances_train.json: not a JSON file"),
        ("missing image", r"images/train/ lacks 1 image\(s\) that the labels name: gone"),
        ("no category", r"annotation 101 lacks \['category_id'\]"),
    ],
)
def test_bad_coco_inputs_give_one_line_naming_file_and_annotation(
    tmp_path, converter, capsys, damage, message
):
    from pycocotools import mask as pycocotools_mask

    root = dataset_root(tmp_path)
    coco_tree(root, pycocotools_mask)

    def change(content):
        polygon, rle = content["annotations"][0], content["annotations"][1]
        if damage == "odd polygon":
            polygon["segmentation"][0].append(7)
        if damage == "two-point polygon":
            polygon["segmentation"] = [[5, 20, 25, 20]]
        if damage == "empty segmentation":
            polygon["segmentation"], polygon["bbox"] = [], [5, 20, 20, 15]
        if damage == "rle size":
            mask = np.zeros((48, 80), np.uint8, order="F")
            mask[2:5, 2:5] = 1
            encoded = pycocotools_mask.encode(mask)
            rle["segmentation"] = dict(encoded, counts=encoded["counts"].decode())
        if damage == "uncompressed rle size":
            mask = np.zeros((48, 80), np.uint8)
            mask[2:5, 2:5] = 1
            rle["segmentation"] = uncompressed_rle(mask)
        if damage == "missing image":
            content["images"].append({"id": 99, "file_name": "gone.png", "height": 40, "width": 64})
            content["annotations"].append(dict(polygon, id=104, image_id=99))
        if damage == "no category":
            del rle["category_id"]

    rewrite_annotations(root, change)
    if damage == "unknown semantic value":
        semantic = cv2.imread(str(root / "semantic" / "train" / "r.png"), cv2.IMREAD_UNCHANGED)
        semantic[39, 63] = 9
        write_png(root / "semantic" / "train" / "r.png", semantic)
    if damage == "not json":
        path = root / "annotations" / "instances_train.json"
        path.write_text(path.read_text()[:-20])
    assert run_coco(converter, root) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err  # + progress
    assert_nothing_written(root)


def test_skip_missing_converts_the_rest_and_lists_what_it_skipped(tmp_path, converter, capsys):
    from pycocotools import mask as pycocotools_mask

    root = dataset_root(tmp_path)
    coco_tree(root, pycocotools_mask)
    (root / "images" / "train" / "r.png").unlink()  # annotated, with a semantic PNG
    assert run_coco(converter, root) == 1
    assert "lacks 1 image(s) that the labels name: r " in capsys.readouterr().err
    assert_nothing_written(root)
    assert run_coco(converter, root, "--skip-missing") == 0
    out, err = capsys.readouterr()
    assert "1 labelled images missing, skipped" in out and "converted without them: r" in err
    _, by_file = converted(root)
    assert sorted(by_file) == ["empty.png", "p.png"]


def test_palette_and_16_bit_label_pngs(tmp_path, converter, capsys):
    """Labelling tools write palette PNGs (read as their indices, not their colours); class
    ids above 255 need 16-bit PNGs. Both written with Pillow, as those tools do."""
    from PIL import Image

    root = dataset_root(tmp_path)
    table = json.loads(json.dumps(CLASSES))
    table["classes"].append({"id": 300, "name": "wall", "isthing": False, "color": [9, 9, 9]})
    (root / "classes.yaml").write_text(yaml.safe_dump(table))
    semantic = np.ones((4, 6), np.uint8)
    semantic[:, 3:] = 2
    semantic[1:3, 1:3] = 3
    palette = Image.fromarray(semantic, mode="P")
    palette.putpalette([0, 0, 0, 128, 64, 128, 70, 130, 180, 0, 0, 142] + [0] * 756)
    (root / "semantic" / "train").mkdir(parents=True)
    palette.save(root / "semantic" / "train" / "a.png")
    wide = semantic.astype(np.uint16)
    wide[0, :] = 300
    Image.fromarray(wide).save(root / "semantic" / "train" / "b.png")  # mode I;16
    instances = np.zeros((4, 6), np.uint8)
    instances[1:3, 1:3] = 5
    for name in "ab":
        write_png(root / "instances" / "train" / f"{name}.png", instances)
        random_image(root / "images" / "train" / f"{name}.png", 4, 6, 0)
    code = converter.main(["--root", str(root), "--format", "semantic-instance", "--splits",
                           "train"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    _, by_file = converted(root)
    kinds = sorted((s["category_id"], s["area"]) for s in by_file["a.png"]["segments_info"])
    assert kinds == [(1, 8), (2, 12), (3, 4)]
    kinds = sorted((s["category_id"], s["area"]) for s in by_file["b.png"]["segments_info"])
    assert kinds == [(1, 5), (2, 9), (3, 4), (300, 6)]
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "semantic" / "train" / "a.png")
    assert converter.main(["--root", str(root), "--format", "semantic-instance", "--splits",
                           "train", "--overwrite"]) == 1  # fmt: skip
    assert "a.png: a RGB image; expected a one-channel label PNG" in capsys.readouterr().err


def test_a_missing_split_fails_before_any_split_is_written(tmp_path, converter, capsys):
    from pycocotools import mask as pycocotools_mask

    root = dataset_root(tmp_path)
    coco_tree(root, pycocotools_mask)  # train only; the default --splits are train val
    assert converter.main(["--root", str(root), "--format", "coco"]) == 1
    assert "no images under" in capsys.readouterr().err and "images/val" in str(root / "images/val")
    assert_nothing_written(root)


def test_rle_decoding_equals_pycocotools(converter):
    from pycocotools import mask as pycocotools_mask

    rng = np.random.default_rng(0)
    for height, width in ((40, 64), (7, 3), (1, 1), (33, 50)):
        mask = np.asfortranarray(rng.random((height, width)) < rng.random())
        encoded = pycocotools_mask.encode(mask.astype(np.uint8))
        expected = pycocotools_mask.decode(encoded).astype(bool)
        compressed = dict(encoded, counts=encoded["counts"].decode())
        assert np.array_equal(converter.rle_mask(compressed, height, width), expected)
        assert np.array_equal(converter.rle_mask(uncompressed_rle(mask), height, width), expected)
    with pytest.raises(ValueError, match="cover 7 pixels, the image has 6"):
        converter.rle_mask({"counts": [3, 4]}, 2, 3)
