"""Structured fuzzing of every reader of user files: each mutated file ends in a correct result
or in the reader's own named error, never in a raw exception from a library.

Readers: weight files (.pth zip, .pkl), the custom-data class table, COCO instances json and
label PNGs, the runtime's metadata.json, and images. Mutations are seeded (the same every run):
truncation, byte flips, inserted garbage, and, for structured files, keys removed and values
replaced by values of other JSON types.
"""

import copy
import io
import json
import pickle
import random

import cv2
import numpy as np
import pytest
import torch
import yaml

from efficientps.demo import UnreadableInputError, read_image
from efficientps.engine.weight_files import WeightFileError, read_weight_file
from efficientps_runtime import ModelFolderError, read_metadata

from .dataset_trees import load_script

RUNS = 100
ODD_VALUES = [None, 0, -1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}, True, 10**12]


def byte_mutations(data, seed):
    """``RUNS`` damaged copies of ``data``: truncated, bytes flipped, garbage inserted."""
    rng = random.Random(seed)
    for run in range(RUNS):
        damaged = bytearray(data)
        kind = run % 3
        if kind == 0:
            damaged = damaged[: rng.randrange(0, len(damaged))]
        elif kind == 1:
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        else:
            at = rng.randrange(len(damaged))
            damaged[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        yield bytes(damaged)


def structure_mutations(document, seed):
    """``RUNS`` copies of a JSON-like ``document`` with one node removed or retyped."""
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, (dict, list)):
            for key, child in node.items() if isinstance(node, dict) else enumerate(node):
                walk(child, path + (key,))

    walk(document, ())
    rng = random.Random(seed)
    for _ in range(RUNS):
        mutated = copy.deepcopy(document)
        path = rng.choice(paths[1:])
        parent = mutated
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.3 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        yield mutated
    yield None
    yield []


def read_or_named_error(read, path, error_type, named=None):
    """``read(path)``'s result, or None when it raised ``error_type`` naming ``named`` (the
    file by default); any other exception fails the test."""
    try:
        return read(str(path))
    except error_type as error:
        assert str(named or path) in str(error), error
        return None


def test_weight_files(tmp_path):
    pth = io.BytesIO()
    torch.save({"model": {"w": torch.ones(3, 2), "n": np.arange(4)}, "iteration": 7}, pth)
    pkl = pickle.dumps({"model": {"w": np.ones((3, 2), np.float32)}, "__author__": "zoo"})
    for suffix, data in ((".pth", pth.getvalue()), (".pkl", pkl)):
        for index, damaged in enumerate(byte_mutations(data, seed=len(suffix))):
            path = tmp_path / f"damaged_{index}{suffix}"
            path.write_bytes(damaged)
            loaded = read_or_named_error(read_weight_file, path, WeightFileError)
            assert loaded is None or isinstance(loaded, dict)  # some damage leaves it readable


@pytest.fixture(scope="module")
def converter():
    return load_script("prepare_custom_panoptic")


def test_class_tables(tmp_path, converter):
    table = {
        "void": [0],
        "classes": [
            {"id": 1, "name": "road", "isthing": False, "color": [128, 64, 128]},
            {"id": 2, "name": "car", "isthing": True, "color": [0, 0, 142]},
        ],
    }
    for index, mutated in enumerate(structure_mutations(table, seed=1)):
        for suffix, text in ((".yaml", yaml.safe_dump(mutated)), (".json", json.dumps(mutated))):
            path = tmp_path / f"classes_{index}{suffix}"
            path.write_text(text)
            read_or_named_error(converter.read_class_table, path, converter.CustomDatasetError)
    for index, damaged in enumerate(byte_mutations(yaml.safe_dump(table).encode(), seed=2)):
        path = tmp_path / f"bytes_{index}.yaml"
        path.write_bytes(damaged)
        read_or_named_error(converter.read_class_table, path, converter.CustomDatasetError)


def coco_dataset(root):
    """A 20x30 image with one polygon car over a semantic PNG of road."""
    (root / "classes.yaml").write_text(yaml.safe_dump({"void": [0], "classes": [
        {"id": 1, "name": "road", "isthing": False, "color": [128, 64, 128]},
        {"id": 2, "name": "car", "isthing": True, "color": [0, 0, 142]},
    ]}))  # fmt: skip
    for folder in ("images/train", "semantic/train", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / "train" / "a.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(root / "semantic" / "train" / "a.png"), np.ones((20, 30), np.uint8))
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]},
            {"id": 6, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": {"size": [20, 30], "counts": [400, 10, 190]}},
        ],
    }  # fmt: skip


def test_coco_instances_json(tmp_path, converter, capsys):
    root = tmp_path / "mine"
    root.mkdir()
    document = coco_dataset(root)
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps(document))
    arguments = ["--root", str(root), "--format", "coco", "--splits", "train", "--overwrite"]
    assert converter.main(arguments) == 0  # the undamaged file converts
    for mutated in structure_mutations(document, seed=3):
        path.write_text(json.dumps(mutated))
        code = converter.main(arguments)  # never raises
        err = capsys.readouterr().err
        assert code == 0 or "error: " in err, err


def test_label_pngs(tmp_path, converter):
    ok, png = cv2.imencode(".png", np.arange(600, dtype=np.uint16).reshape(20, 30))
    assert ok
    for index, damaged in enumerate(byte_mutations(png.tobytes(), seed=4)):
        path = tmp_path / f"label_{index}.png"
        path.write_bytes(damaged)
        labels = read_or_named_error(converter.read_label_png, path, converter.CustomDatasetError)
        assert labels is None or labels.ndim == 2


def test_runtime_metadata(tmp_path):
    metadata = {
        "format_version": 2, "model": "model.onnx",
        "input": {"channel_order": "BGR", "min_size_test": 64, "max_size_test": 128},
        "classes": [{"channel": 0, "dataset_id": 7, "name": "road", "isthing": False},
                    {"channel": 1, "dataset_id": 26, "name": "car", "isthing": True}],
        "stuff_channels": [0], "thing_channels": [1], "outputs": ["sem_logits"],
        "fusion": {"score_thresh": 0.5, "overlap_thresh": 0.5, "stuff_area": 2048,
                   "stuff_area_reference": [1024, 2048], "mask_logit_scale": 1.0,
                   "pixel_rule": "argmax",
                   "quality": {"feature_weights": [1.0, 0.0, 0.0, 0.0, 0.0], "class_bias": [0.0]}},
    }  # fmt: skip
    valid = tmp_path / "valid"
    valid.mkdir()
    (valid / "metadata.json").write_text(json.dumps(metadata))
    assert read_metadata(str(valid)) == metadata
    for index, mutated in enumerate(structure_mutations(metadata, seed=5)):
        folder = tmp_path / f"model_{index}"
        folder.mkdir()
        (folder / "metadata.json").write_text(json.dumps(mutated))
        read_or_named_error(read_metadata, folder, ModelFolderError, "metadata.json")
    for index, damaged in enumerate(byte_mutations(json.dumps(metadata).encode(), seed=6)):
        folder = tmp_path / f"bytes_{index}"
        folder.mkdir()
        (folder / "metadata.json").write_bytes(damaged)
        read_or_named_error(read_metadata, folder, ModelFolderError, "metadata.json")


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_images(tmp_path, extension):
    ok, encoded = cv2.imencode(extension, np.random.default_rng(0).integers(0, 255, (24, 32, 3)))
    assert ok
    for index, damaged in enumerate(byte_mutations(encoded.tobytes(), seed=7)):
        path = tmp_path / f"image_{index}{extension}"
        path.write_bytes(damaged)
        image = read_or_named_error(read_image, path, UnreadableInputError)
        assert image is None or (image.ndim == 3 and image.shape[2] == 3)
