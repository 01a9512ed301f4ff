"""Registrations of every dataset format from small trees in their real layouts, and bad input."""

import itertools
import json
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from efficientps.data import synthetic
from efficientps.data.datasets import (
    DatasetFormatError,
    register_cityscapes_panoptic,
    register_coco_panoptic,
    register_kitti_panoptic,
    register_mapillary_vistas,
    register_synthetic_panoptic,
)
from efficientps.evaluation import read_panoptic_png

from .dataset_trees import (
    CITYSCAPES_EXPECTED,
    load_script,
    make_cityscapes_tree,
    make_kitti_tree,
    make_vistas_tree,
    write_rgb_ids,
)


def unique_name(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def count_kinds(record, thing_channels):
    """(things, crowd regions, stuff) segments of a record."""
    segments = record["segments_info"]
    things = sum(1 for s in segments if s["category_id"] in thing_channels and not s["iscrowd"])
    crowd = sum(1 for s in segments if s["iscrowd"])
    stuff = sum(1 for s in segments if s["category_id"] not in thing_channels)
    return things, crowd, stuff


def assert_segments_match_png(record):
    ids = read_panoptic_png(record["pan_seg_file_name"])
    assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in record["segments_info"]}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_split(str(root), "train", 6, seed=3, size=(64, 128), progress=False)
    synthetic.generate_split(str(root), "val", 3, seed=3, size=(64, 128), progress=False)
    return root


def test_synthetic_registration_records_and_metadata(synthetic_root):
    name = unique_name("synth")
    metadata = register_synthetic_panoptic(name, str(synthetic_root), "train")
    records = DatasetCatalog.get(name)
    assert len(records) == 6
    assert metadata.stuff_channels == [0, 1, 2, 3, 4] and metadata.thing_channels == [5, 6, 7]
    assert metadata.thing_dataset_id_to_contiguous_id == {24: 5, 26: 6, 28: 7}
    assert metadata.ignore_label == 255 and metadata.label_divisor == 1000
    assert metadata.evaluator_type == "efficientps_panoptic_seg"
    for record in records:
        assert (record["height"], record["width"]) == (64, 128)
        assert_segments_match_png(record)
        assert all(0 <= s["category_id"] < 8 for s in record["segments_info"])
    assert (
        sum(count_kinds(r, metadata.thing_channels)[0] for r in records) > 6
    )  # several things per scene


def test_synthetic_is_deterministic_per_seed(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for root, seed in ((a, 1), (b, 1), (c, 2)):
        synthetic.generate_split(str(root), "val", 2, seed=seed, size=(48, 96), progress=False)
    pngs = sorted((a / "gtFine" / "cityscapes_panoptic_val").iterdir())
    for png in pngs:
        same = b / "gtFine" / "cityscapes_panoptic_val" / png.name
        assert (read_panoptic_png(str(png)) == read_panoptic_png(str(same))).all()
    json_a = json.loads((a / "gtFine" / "cityscapes_panoptic_val.json").read_text())
    json_c = json.loads((c / "gtFine" / "cityscapes_panoptic_val.json").read_text())
    assert json_a["annotations"] != json_c["annotations"]


def test_cityscapes_prepared_by_cityscapesscripts(tmp_path):
    root = tmp_path / "cityscapes"
    names = make_cityscapes_tree(root, "val")
    prepare = load_script("prepare_cityscapes")
    prepare.main(["--root", str(root), "--splits", "val"])
    for name in names:
        assert (root / "gtFine" / "val" / "testcity" / f"{name}_gtFine_labelTrainIds.png").is_file()
    panoptic_json = root / "gtFine" / "cityscapes_panoptic_val.json"
    stamp = panoptic_json.stat().st_mtime_ns
    prepare.main(["--root", str(root), "--splits", "val"])  # idempotent: nothing redone
    assert panoptic_json.stat().st_mtime_ns == stamp

    name = unique_name("cityscapes")
    metadata = register_cityscapes_panoptic(name, str(root), "val")
    records = sorted(DatasetCatalog.get(name), key=lambda r: r["file_name"])
    assert len(records) == 2
    assert len(metadata.stuff_classes) == 19 and metadata.thing_channels == list(range(11, 19))
    for record, expected in zip(records, CITYSCAPES_EXPECTED):
        assert count_kinds(record, metadata.thing_channels) == expected
        assert_segments_match_png(record)
        train_ids = cv2.imread(record["sem_seg_file_name"], cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(train_ids)) <= set(range(19)) | {255}
    channels = {s["category_id"] for s in records[0]["segments_info"]}
    assert channels == {0, 2, 10, 11, 13}  # road, building, sky, person, car (trainIds)


def test_kitti_prepared_and_registered(tmp_path):
    root = tmp_path / "kitti_panoptic"
    expected = make_kitti_tree(root, "validation")
    prepare = load_script("prepare_kitti_panoptic")
    prepare.main(["--root", str(root), "--splits", "val"])
    name = unique_name("kitti")
    metadata = register_kitti_panoptic(name, str(root), "val")
    records = DatasetCatalog.get(name)
    assert len(records) == 2 and metadata.image_size_hint == (384, 1280)
    for record, want in zip(records, expected):
        assert count_kinds(record, metadata.thing_channels) == (
            want["things"],
            want["crowd"],
            want["stuff"],
        )
        assert_segments_match_png(record)
        ids = read_panoptic_png(record["pan_seg_file_name"])
        assert (ids[-1, :8] == 0).all()  # the ego vehicle (not evaluated) became void
    car = metadata.thing_dataset_id_to_contiguous_id[26]
    assert car == 13
    crowd = [s for s in records[0]["segments_info"] if s["iscrowd"]]
    assert [s["category_id"] for s in crowd] == [car]

    # Resumable: a killed run left one PNG; the next run keeps it and finishes the json.
    (root / "validation_panoptic.json").unlink()
    prepare.main(["--root", str(root), "--splits", "val"])
    assert len(json.loads((root / "validation_panoptic.json").read_text())["annotations"]) == 2


def test_vistas_classes_come_from_the_config(tmp_path):
    root = tmp_path / "mapillary_vistas"
    make_vistas_tree(root, "validation")
    name = unique_name("vistas")
    metadata = register_mapillary_vistas(name, str(root), "val", "v1.2")
    assert metadata.stuff_classes == ["Road", "Sky", "Person", "Car"]
    assert metadata.ignore_label == 4  # = number of classes, as Vistas' 65
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 2, 4: 3}
    records = DatasetCatalog.get(name)
    assert [count_kinds(r, metadata.thing_channels) for r in records] == [(2, 0, 2), (2, 0, 2)]
    for record in records:
        assert_segments_match_png(record)


def test_vistas_json_that_disagrees_with_the_config_fails(tmp_path):
    root = tmp_path / "mapillary_vistas"
    panoptic_json = make_vistas_tree(root, "validation")
    content = json.loads(panoptic_json.read_text())
    content["categories"][0]["name"] = "Bicycle"
    content["categories"][0]["supercategory"] = "object--vehicle--bicycle"
    panoptic_json.write_text(json.dumps(content))
    name = unique_name("vistas")
    register_mapillary_vistas(name, str(root), "val", "v1.2")
    with pytest.raises(DatasetFormatError, match="panoptic_2018.json"):
        DatasetCatalog.get(name)


def test_custom_coco_panoptic_reads_categories_from_json(tmp_path):
    panoptic_json = make_vistas_tree(tmp_path, "split")
    name = unique_name("custom")
    metadata = register_coco_panoptic(
        name, str(tmp_path / "split" / "images"), str(tmp_path / "split" / "panoptic"),
        str(panoptic_json),
    )  # fmt: skip
    assert metadata.stuff_classes == ["Road", "Sky", "Person", "Car"]
    assert metadata.thing_channels == [2, 3]
    assert len(DatasetCatalog.get(name)) == 2


def test_missing_root_names_the_tree_and_the_command(tmp_path):
    name = unique_name("kitti_missing")
    register_kitti_panoptic(name, str(tmp_path / "nowhere"), "train")
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert "training/annotations/*.png" in message
    assert "prepare_kitti_panoptic.py --root" in message


def test_missing_vistas_config_fails_when_used(tmp_path):
    name = unique_name("vistas_missing")
    metadata = register_mapillary_vistas(name, str(tmp_path), "train", "v2.0")
    assert "config_v2.0.json" in metadata.missing_reason
    with pytest.raises(FileNotFoundError, match="config_v2.0.json"):
        DatasetCatalog.get(name)


@pytest.fixture
def custom_tree(tmp_path):
    panoptic_json = make_vistas_tree(tmp_path, "split")
    return tmp_path / "split", panoptic_json


def _register(split_dir, panoptic_json):
    name = unique_name("bad")
    register_coco_panoptic(
        name, str(split_dir / "images"), str(split_dir / "panoptic"), str(panoptic_json)
    )
    return name


def test_image_without_annotation_is_an_error_naming_the_file(custom_tree):
    split_dir, panoptic_json = custom_tree
    content = json.loads(panoptic_json.read_text())
    content["annotations"] = content["annotations"][:1]
    panoptic_json.write_text(json.dumps(content))
    with pytest.raises(DatasetFormatError, match="vistas001.jpg.*has no annotation"):
        DatasetCatalog.get(_register(split_dir, panoptic_json))


def test_unknown_category_is_an_error(custom_tree):
    split_dir, panoptic_json = custom_tree
    content = json.loads(panoptic_json.read_text())
    content["annotations"][0]["segments_info"][0]["category_id"] = 99
    panoptic_json.write_text(json.dumps(content))
    with pytest.raises(DatasetFormatError, match="unknown category_id 99"):
        DatasetCatalog.get(_register(split_dir, panoptic_json))


def test_mapper_rejects_png_ids_missing_from_json_and_unreadable_pngs(custom_tree):
    from efficientps.class_tables import PanopticClassTables
    from efficientps.data import EfficientPSPanopticMapper

    split_dir, panoptic_json = custom_tree
    name = _register(split_dir, panoptic_json)
    records = DatasetCatalog.get(name)
    mapper = EfficientPSPanopticMapper(
        is_train=True,
        augmentations=[],
        class_tables=PanopticClassTables.from_metadata(MetadataCatalog.get(name)),
        ignore_label=4,
    )
    ids = read_panoptic_png(records[0]["pan_seg_file_name"])
    ids[0, 0] = 4242
    write_rgb_ids(records[0]["pan_seg_file_name"], ids)
    with pytest.raises(DatasetFormatError, match=r"vistas000.png has segment ids \[4242\]"):
        mapper(records[0])
    with open(records[1]["pan_seg_file_name"], "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DatasetFormatError, match="vistas001.png"):
        mapper(records[1])


def test_all_builtin_names_are_registered():
    names = set(DatasetCatalog.list())
    for prefix, split in itertools.product(
        ("synthetic_panoptic", "kitti_panoptic", "mapillary_vistas_panoptic",
         "mapillary_vistas_v2_panoptic", "cityscapes_fine_panoptic"),
        ("train", "val"),
    ):  # fmt: skip
        assert f"{prefix}_{split}" in names


def make_vistas_v2_tree(root, split_folder="validation"):
    """The v2.0 download: images/ beside v2.0/panoptic/{*.png, panoptic_2020.json}."""
    make_vistas_tree(root, f"{split_folder}/v2.0", version="v2.0")
    nested = root / split_folder / "v2.0"
    (nested / "images").rename(root / split_folder / "images")
    (nested / "panoptic" / "panoptic_2018.json").rename(nested / "panoptic" / "panoptic_2020.json")


def test_vistas_v2_nested_layout_end_to_end(tmp_path):
    from efficientps.class_tables import PanopticClassTables
    from efficientps.data import EfficientPSPanopticMapper

    root = tmp_path / "mapillary_vistas"
    make_vistas_v2_tree(root)
    name = unique_name("vistas_v2")
    metadata = register_mapillary_vistas(name, str(root), "val", "v2.0")
    records = DatasetCatalog.get(name)
    assert len(records) == 2
    assert records[0]["file_name"] == str(root / "validation" / "images" / "vistas000.jpg")
    assert records[0]["pan_seg_file_name"] == str(
        root / "validation" / "v2.0" / "panoptic" / "vistas000.png"
    )
    mapper = EfficientPSPanopticMapper(
        is_train=True,
        augmentations=[],
        class_tables=PanopticClassTables.from_metadata(metadata),
        ignore_label=metadata.ignore_label,
    )
    out = mapper(records[0])
    semantic = out["sem_seg"].numpy()
    # make_vistas_tree: sky (channel 1) on top, road (0) below, a person (2) and a car (3).
    assert semantic[0, 0] == 1 and semantic[-1, 0] == 0
    assert semantic[30, 10] == 2 and semantic[30, 45] == 3
    assert out["instances"].gt_classes.tolist() == [0, 1]  # person, car as thing indices
    assert out["instances"].gt_boxes.tensor.tolist() == [
        [5.0, 20.0, 15.0, 40.0],
        [30.0, 25.0, 60.0, 45.0],
    ]


def test_builtin_datasets_are_found_under_detectron2_datasets(tmp_path):
    """A fresh process with DETECTRON2_DATASETS set finds KITTI and Vistas v2.0 there."""
    import os
    import subprocess
    import sys

    make_kitti_tree(tmp_path / "kitti_panoptic", "validation")
    load_script("prepare_kitti_panoptic").main(
        ["--root", str(tmp_path / "kitti_panoptic"), "--splits", "val"]
    )
    make_vistas_v2_tree(tmp_path / "mapillary_vistas")
    code = (
        "import json, efficientps; from detectron2.data import DatasetCatalog; "
        "print(json.dumps({n: [r['file_name'] for r in DatasetCatalog.get(n)] "
        "for n in ('kitti_panoptic_val', 'mapillary_vistas_v2_panoptic_val')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    files = json.loads(out.stdout.strip().splitlines()[-1])
    assert files["kitti_panoptic_val"] == [
        str(tmp_path / "kitti_panoptic" / "validation" / "images" / f"{k:06d}.png") for k in (0, 1)
    ]
    assert files["mapillary_vistas_v2_panoptic_val"] == [
        str(tmp_path / "mapillary_vistas" / "validation" / "images" / f"vistas{k:03d}.jpg")
        for k in (0, 1)
    ]
