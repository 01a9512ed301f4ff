"""Panoptic quality: hand cases, agreement with cityscapesscripts, the CLI, bad input."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from efficientps.data import synthetic
from efficientps.evaluation import (
    PanopticFormatError,
    PQAccumulator,
    read_panoptic_png,
    write_panoptic_png,
)
from efficientps_pq.__main__ import evaluate_folders
from efficientps_pq.__main__ import main as cli_main

CATEGORIES = [
    {"id": 1, "name": "road", "isthing": 0},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "person", "isthing": 1},
]


def seg(segment_id, category, crowd=0):
    return {"id": segment_id, "category_id": category, "iscrowd": crowd}


def pq_of(gt_ids, gt_segments, pred_ids, pred_segments):
    accumulator = PQAccumulator(CATEGORIES)
    accumulator.add(np.asarray(gt_ids), gt_segments, np.asarray(pred_ids), pred_segments)
    return accumulator


def test_perfect_prediction_is_100():
    ids = np.array([[1, 1, 5, 5], [1, 1, 5, 6], [0, 1, 6, 6]])
    segments = [seg(1, 1), seg(5, 2), seg(6, 3)]
    results = pq_of(ids, segments, ids, segments).results()
    assert results["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}


def test_one_false_positive_and_one_false_negative():
    gt = np.array([[1, 1, 1, 1], [1, 5, 5, 1], [1, 5, 5, 1]])
    # The car is missed (FN) and a person is predicted on road pixels (FP).
    pred = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [7, 7, 1, 1]])
    a = pq_of(gt, [seg(1, 1), seg(5, 2)], pred, [seg(1, 1), seg(7, 3)])
    assert a.tp.tolist() == [1, 0, 0] and a.fn.tolist() == [0, 1, 0] and a.fp.tolist() == [0, 0, 1]
    road_iou = 7 / 11  # gt road 8 px, pred road 10 px, 7 in common
    assert a.iou[0] == pytest.approx(road_iou, abs=1e-12)
    results = a.results()
    assert results["Stuff"]["pq"] == pytest.approx(road_iou, abs=1e-12)
    assert results["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}


def test_split_segment_matches_once_and_the_rest_is_a_false_positive():
    gt = np.zeros((2, 5), int) + 5
    pred = np.array([[8, 8, 8, 9, 9], [8, 8, 8, 9, 9]])  # 6 px and 4 px of one 10 px car
    a = pq_of(gt, [seg(5, 2)], pred, [seg(8, 2), seg(9, 2)])
    assert a.tp[1] == 1 and a.fp[1] == 1 and a.fn[1] == 0
    assert a.iou[1] == pytest.approx(0.6, abs=1e-12)
    assert a.results()["per_class"][2]["pq"] == pytest.approx(0.6 / 1.5, abs=1e-12)


def test_void_pixels_leave_the_union_and_mostly_void_predictions_are_not_false_positives():
    gt = np.array([[5, 5, 0, 0, 0], [5, 5, 0, 0, 0]])
    # The car prediction spills onto void; a person sits entirely on void.
    pred = np.array([[5, 5, 5, 7, 7], [5, 5, 5, 7, 7]])
    a = pq_of(gt, [seg(5, 2)], pred, [seg(5, 2), seg(7, 3)])
    assert a.iou[1] == pytest.approx(1.0)  # the 2 void pixels are not in the union
    assert a.fp.tolist() == [0, 0, 0]


def test_crowd_is_not_a_false_negative_and_covers_predictions_of_its_class():
    gt = np.array([[2, 2, 2, 1], [2, 2, 2, 1]])  # a car crowd region (id 2) and road
    pred = np.array([[8, 8, 3, 1], [8, 8, 3, 1]])  # a car on the crowd, a person on it too
    a = pq_of(gt, [seg(2, 2, crowd=1), seg(1, 1)], pred, [seg(8, 2), seg(3, 3), seg(1, 1)])
    assert a.fn.tolist() == [0, 0, 0]
    assert a.fp.tolist() == [0, 0, 1]  # the car is covered by its class' crowd, the person not


def test_bad_input_is_named():
    ids = np.ones((2, 2), int)
    with pytest.raises(PanopticFormatError, match="prediction is 3x2, ground truth 2x2"):
        pq_of(ids, [seg(1, 1)], np.ones((2, 3), int), [seg(1, 1)])
    with pytest.raises(PanopticFormatError, match="unknown category_id 42"):
        pq_of(ids, [seg(1, 1)], ids, [seg(1, 42)])
    with pytest.raises(PanopticFormatError, match=r"ids \[1\] are in the PNG but not"):
        pq_of(ids, [seg(1, 1)], ids, [])


def perturb(ids, segments, rng):
    """A plausible imperfect prediction: shifted, merged, relabelled, dropped, invented."""
    pred = np.roll(ids, rng.integers(-3, 4), axis=int(rng.integers(0, 2)))
    out_segments = []
    next_id = int(pred.max()) + 1
    for s in segments:
        mask = pred == s["id"]
        choice = rng.random()
        if choice < 0.1:
            pred[mask] = 0  # dropped (void)
            continue
        category = s["category_id"]
        if choice < 0.2:  # wrong class
            category = int(rng.choice([c["id"] for c in synthetic.CATEGORIES]))
        if choice > 0.85 and mask.sum() > 20:  # split in two
            ys, xs = np.nonzero(mask)
            right = mask & (np.arange(ids.shape[1])[None, :] > np.median(xs))
            pred[right] = next_id
            out_segments.append({"id": next_id, "category_id": category, "iscrowd": 0})
            next_id += 1
        out_segments.append({"id": s["id"], "category_id": category, "iscrowd": 0})
    h, w = ids.shape
    y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
    pred[y : y + 8, x : x + 8] = next_id  # an invented object
    out_segments.append({"id": next_id, "category_id": 26, "iscrowd": 0})
    present = set(np.unique(pred).tolist())
    return pred, [s for s in out_segments if s["id"] in present]


@pytest.fixture(scope="module")
def gt_and_predictions(tmp_path_factory):
    root = tmp_path_factory.mktemp("pq")
    gt_json = synthetic.generate_split(str(root), "val", 12, seed=7, size=(64, 128), progress=False)
    gt_dir = root / "gtFine" / "cityscapes_panoptic_val"
    content = json.loads(open(gt_json).read())
    # Mark one segment as crowd so crowd handling is part of the comparison.
    content["annotations"][0]["segments_info"][-1]["iscrowd"] = 1
    with open(gt_json, "w") as f:
        json.dump(content, f)
    pred_dir = root / "pred"
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    annotations = []
    for annotation in content["annotations"]:
        ids = read_panoptic_png(str(gt_dir / annotation["file_name"]))
        pred, segments = perturb(ids, annotation["segments_info"], rng)
        write_panoptic_png(str(pred_dir / annotation["file_name"]), pred)
        annotations.append(
            {"image_id": annotation["image_id"], "file_name": annotation["file_name"],
             "segments_info": segments}
        )  # fmt: skip
    pred_json = root / "pred.json"
    pred_json.write_text(json.dumps({"annotations": annotations}))
    return str(gt_json), str(gt_dir), str(pred_json), str(pred_dir), root


def test_agrees_with_cityscapesscripts_to_1e9(gt_and_predictions, tmp_path):
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    gt_json, gt_dir, pred_json, pred_dir, _ = gt_and_predictions
    ours, _ = evaluate_folders(gt_json, gt_dir, pred_json, pred_dir, progress=False)
    theirs = evaluatePanoptic(gt_json, gt_dir, pred_json, pred_dir, str(tmp_path / "r.json"))
    assert 0.2 < ours["All"]["pq"] < 0.95  # the perturbations make a non-trivial case
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == theirs[group]["n"]
        for metric in ("pq", "sq", "rq"):
            assert abs(ours[group][metric] - theirs[group][metric]) < 1e-9
    for category, values in theirs["per_class"].items():
        for metric in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][category][metric] - values[metric]) < 1e-9


def test_cli_writes_cityscapesscripts_json(gt_and_predictions, tmp_path, capsys):
    gt_json, gt_dir, pred_json, pred_dir, _ = gt_and_predictions
    output = tmp_path / "results.json"
    cli_main(["--gt-json", gt_json, "--gt-dir", gt_dir, "--pred-json", pred_json,
              "--pred-dir", pred_dir, "--output", str(output)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Things" in printed and "person" in printed
    written = json.loads(output.read_text())
    assert set(written) == {"All", "Things", "Stuff", "per_class"}
    assert set(written["All"]) == {"pq", "sq", "rq", "n"}
    assert 0 < written["All"]["pq"] < 1  # a fraction, as cityscapesscripts writes it


def test_offline_command_runs_without_torch_or_detectron2(gt_and_predictions, tmp_path):
    """``python -m efficientps_pq`` imports neither: they would take ~6 s to import
    against ~0.5 s for evaluating 50 Cityscapes-sized images."""
    gt_json, gt_dir, pred_json, pred_dir, _ = gt_and_predictions
    output = tmp_path / "results.json"
    command = [sys.executable, "-X", "importtime", "-m", "efficientps_pq",
               "--gt-json", gt_json, "--gt-dir", gt_dir, "--pred-json", pred_json,
               "--pred-dir", pred_dir, "--output", str(output)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Things" in done.stdout and "Saved" in done.stdout  # flushed before the fast exit
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "efficientps_pq.panoptic_png" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "detectron2")}
    in_process, _ = evaluate_folders(gt_json, gt_dir, pred_json, pred_dir, progress=False)
    assert json.loads(output.read_text())["All"] == in_process["All"]


def test_cli_names_missing_files(gt_and_predictions, tmp_path):
    gt_json, gt_dir, pred_json, pred_dir, root = gt_and_predictions
    broken = tmp_path / "pred"
    shutil.copytree(pred_dir, broken)
    first = sorted(broken.iterdir())[0]
    first.unlink()
    with pytest.raises(SystemExit, match=f"{first.name} not found"):
        cli_main(["--gt-json", gt_json, "--gt-dir", gt_dir, "--pred-json", pred_json,
                  "--pred-dir", str(broken)])  # fmt: skip
    with pytest.raises(SystemExit, match="no such json file"):
        cli_main(["--gt-json", str(tmp_path / "nope.json"), "--gt-dir", gt_dir,
                  "--pred-json", pred_json, "--pred-dir", pred_dir])  # fmt: skip


@pytest.mark.parametrize(
    "segments, high_ids", [(40, False), (300, False), (40, True)], ids=["few", "many", "big-ids"]
)
def test_pair_counts_match_a_brute_force_count(segments, high_ids):
    from efficientps_pq.panoptic_quality import UNLISTED, intersections

    rng = np.random.default_rng(segments)
    offset = 2**30 if high_ids else 0  # beyond the 24 bits of PNG ids
    gt_ids = rng.integers(0, segments, (60, 80)) + offset
    pred_ids = rng.integers(0, segments, (60, 80)) + offset
    gt_ids[:5] = pred_ids[:, :3] = 0  # void
    gt_listed = np.unique(gt_ids)[1:-3]  # a few ids are not listed
    pred_listed = np.unique(pred_ids)[1:]
    gi, pi, counts = intersections(gt_ids, pred_ids, gt_listed, pred_listed)

    def labelled(ids, listed):
        return np.where(np.isin(ids, listed) | (ids == 0), ids, UNLISTED)

    pairs = np.stack([labelled(gt_ids, gt_listed).ravel(), labelled(pred_ids, pred_listed).ravel()])
    expected, expected_counts = np.unique(pairs, axis=1, return_counts=True)
    got = sorted(zip(gi.tolist(), pi.tolist(), counts.tolist()))
    assert got == sorted(zip(*expected.tolist(), expected_counts.tolist()))


def test_mask_rle_from_the_box_is_pycocotools_rle():
    import pycocotools.mask as mask_util

    from efficientps.evaluation.rle import encode_mask

    rng = np.random.default_rng(3)
    masks = [np.zeros((7, 9), bool), np.ones((7, 9), bool)]
    for corner in ((0, 0), (6, 8), (0, 8), (6, 0)):
        single = np.zeros((7, 9), bool)
        single[corner] = True
        masks.append(single)
    for _ in range(30):
        mask = np.zeros((40, 50), bool)
        y0, x0 = rng.integers(0, 40), rng.integers(0, 50)
        y1, x1 = rng.integers(y0 + 1, 41), rng.integers(x0 + 1, 51)
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.random()
        masks.append(mask)
    for mask in masks:
        expected = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        got = encode_mask(mask)
        assert got["counts"] == expected["counts"] and list(got["size"]) == list(expected["size"])
