"""EfficientPSEvaluator on a registered dataset: PQ, mIoU and AP of known outputs, the mIoU
against a brute-force count, and bad semantic classes."""

import re
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Instances

from efficientps.data import synthetic
from efficientps.data.datasets import register_synthetic_panoptic
from efficientps.evaluation import EfficientPSEvaluator, read_panoptic_png


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluator") / "synthetic"
    synthetic.generate_split(str(root), "val", 4, seed=3, size=(64, 128), progress=False)
    name = f"synth_evaluator_{uuid.uuid4().hex[:6]}"
    register_synthetic_panoptic(name, str(root), "val")
    return name


def semantic_of(ids, segments, ignore_label):
    semantic = np.full(ids.shape, ignore_label, np.int64)
    for s in segments:
        semantic[ids == s["id"]] = s["category_id"]
    return semantic


def outputs_for(record, metadata, rng):
    """Perfect panoptic and instance outputs; semantic logits with a wrong block."""
    ids = read_panoptic_png(record["pan_seg_file_name"]).astype(np.int64)
    segments = record["segments_info"]
    num_classes = len(metadata.stuff_classes)
    thing_channels = sorted(metadata.thing_dataset_id_to_contiguous_id.values())
    semantic = semantic_of(ids, segments, metadata.ignore_label)
    predicted = np.where(semantic == metadata.ignore_label, 0, semantic)
    y, x = rng.integers(0, 32), rng.integers(0, 64)
    predicted[y : y + 20, x : x + 40] = rng.integers(0, num_classes)
    logits = torch.nn.functional.one_hot(torch.from_numpy(predicted), num_classes)
    things = [s for s in segments if s["category_id"] in thing_channels]
    instances = Instances(ids.shape)
    instances.pred_masks = torch.from_numpy(np.stack([ids == s["id"] for s in things]))
    instances.scores = torch.full((len(things),), 0.9)
    instances.pred_classes = torch.tensor([thing_channels.index(s["category_id"]) for s in things])
    output = {
        "panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), segments),
        "sem_seg": logits.permute(2, 0, 1).float(),
        "instances": instances,
    }
    return output, semantic, predicted


def test_known_outputs_give_pq_100_ap_100_and_the_brute_force_miou(dataset):
    metadata = MetadataCatalog.get(dataset)
    records = DatasetCatalog.get(dataset)
    evaluator = EfficientPSEvaluator(dataset, distributed=False)
    evaluator.reset()
    rng = np.random.default_rng(0)
    gt_all, pred_all = [], []
    for record in records:
        output, semantic, predicted = outputs_for(record, metadata, rng)
        evaluator.process([record], [output])
        gt_all.append(semantic.ravel())
        pred_all.append(predicted.ravel())
    results = evaluator.evaluate()

    assert results["panoptic_seg"]["PQ"] == pytest.approx(100)
    assert results["segm"]["AP"] == pytest.approx(100)
    gt, pred = np.concatenate(gt_all), np.concatenate(pred_all)
    valid = gt != metadata.ignore_label
    ious = []
    for c in range(len(metadata.stuff_classes)):
        union = ((gt == c) | (pred == c)) & valid
        if union.any():
            ious.append(((gt == c) & (pred == c) & valid).sum() / union.sum())
    assert 0 < np.mean(ious) < 1  # the wrong blocks cost something
    assert results["sem_seg"]["mIoU"] == pytest.approx(100 * np.mean(ious), abs=1e-9)


def test_semantic_class_outside_the_classes_names_the_image(dataset):
    metadata = MetadataCatalog.get(dataset)
    record = DatasetCatalog.get(dataset)[0]
    output, _, _ = outputs_for(record, metadata, np.random.default_rng(1))
    num_classes = len(metadata.stuff_classes)
    output["sem_seg"] = torch.cat([output["sem_seg"], 2 * output["sem_seg"][:1]])  # one too many
    evaluator = EfficientPSEvaluator(dataset, distributed=False)
    evaluator.reset()
    expected = f"{re.escape(record['file_name'])}.*outside 0..{num_classes - 1}"
    with pytest.raises(ValueError, match=expected):
        evaluator.process([record], [output])
