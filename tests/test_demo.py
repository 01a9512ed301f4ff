"""The demo CLI: files, folders, videos, unreadable input (the folded inference path it runs is
pinned against the plain path in test_inference_path)."""

import json

import cv2
import numpy as np
import pytest

from efficientps.data import synthetic
from efficientps.demo import UnreadableInputError, ground_truth_vs_prediction_sheet
from efficientps.demo import main as demo_main
from efficientps.evaluation import read_panoptic_png

from .helpers import DEMO_CONFIG, random_demo_checkpoint

# Random weights score every class low: keep the detections so the instance path runs.
KEEP_DETECTIONS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.EFFICIENTPS.FUSION_SCORE_THRESH", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "10", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained_files(tmp_path_factory):
    """A val split on disk, its registration, and a checkpoint of a (random) demo model."""
    root = tmp_path_factory.mktemp("demo_cli")
    images, opts = random_demo_checkpoint(root, "synth_demo", KEEP_DETECTIONS, count=3, seed=2)
    return root, images, opts


def test_demo_writes_png_json_and_visualisation_per_image(trained_files, tmp_path):
    root, images, opts = trained_files
    folder = images[0].parent
    written = demo_main(["--config-file", DEMO_CONFIG, "--input", str(folder),
                         "--output", str(tmp_path), "--opts", *opts])  # fmt: skip
    assert len(written) == 3
    for image in images:
        stem = tmp_path / image.stem
        ids = read_panoptic_png(f"{stem}_panoptic.png")
        segments = json.loads(open(f"{stem}_panoptic.json").read())["segments_info"]
        assert ids.shape == (64, 128)
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in segments}
        dataset_ids = {c["id"] for c in synthetic.CATEGORIES}
        assert all(s["category_id"] in dataset_ids for s in segments)  # the dataset's own ids
        assert any(s["isthing"] for s in segments)
        vis = cv2.imread(f"{stem}_vis.png")
        assert vis.shape == (64, 128, 3)


def test_demo_semantic_and_instance_pngs_on_request(trained_files, tmp_path):
    _, images, opts = trained_files
    demo_main(["--config-file", DEMO_CONFIG, "--input", str(images[0]), "--output",
               str(tmp_path), "--semantic", "--instances", "--opts", *opts])  # fmt: skip
    stem = tmp_path / images[0].stem
    ids = read_panoptic_png(f"{stem}_panoptic.png")
    segments = json.loads(open(f"{stem}_panoptic.json").read())["segments_info"]
    semantic = cv2.imread(f"{stem}_semantic.png", cv2.IMREAD_UNCHANGED)
    instances = cv2.imread(f"{stem}_instances.png", cv2.IMREAD_UNCHANGED)
    assert semantic.shape == instances.shape == ids.shape and instances.dtype == np.uint16
    # Semantic: every pixel labelled, in the dataset's ids; they agree with the stuff segments.
    assert set(np.unique(semantic).tolist()) <= {c["id"] for c in synthetic.CATEGORIES}
    for s in segments:
        if not s["isthing"]:
            assert (semantic[ids == s["id"]] == s["category_id"]).all()
    # Instances: the thing segments' ids where they are, 0 elsewhere.
    things = {s["id"] for s in segments if s["isthing"]}
    assert things and set(np.unique(instances).tolist()) - {0} == things
    assert ((instances > 0) == np.isin(ids, list(things))).all()
    assert not (tmp_path / f"{images[1].stem}_semantic.png").exists()


def test_overview_sheet_puts_ground_truth_next_to_predictions(trained_files, tmp_path):
    root, images, opts = trained_files
    demo_main(["--config-file", DEMO_CONFIG, "--input", *map(str, images[:2]),
               "--output", str(tmp_path), "--opts", *opts])  # fmt: skip
    name = opts[opts.index("DATASETS.TEST") + 1].strip("(',)")
    vis_paths = [str(tmp_path / f"{image.stem}_vis.png") for image in images[:2]]
    path = ground_truth_vs_prediction_sheet(vis_paths, name, str(tmp_path / "sheet.png"), scale=1)
    sheet = cv2.imread(path)
    # A header, then per image a 4-pixel gap below: ground truth | 4 px | prediction.
    assert sheet.shape == (28 + 2 * (64 + 4), 128 + 4 + 128, 3)
    truth = sheet[28 : 28 + 64, :128].astype(int)
    image = cv2.imread(str(images[0])).astype(int)
    assert np.abs(truth - image).mean() > 5  # the ground-truth segments are drawn over the image


def test_demo_reads_videos_frame_by_frame(trained_files, tmp_path):
    root, images, opts = trained_files
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 64))
    for image in images[:2]:
        writer.write(cv2.imread(str(image)))
    writer.release()
    out = tmp_path / "out"
    written = demo_main(["--config-file", DEMO_CONFIG, "--input", str(video), "--output",
                         str(out), "--opts", *opts])  # fmt: skip
    assert [p.rsplit("/", 1)[1] for p in written] == ["clip_000000", "clip_000001"]
    assert (out / "clip_000001_vis.png").is_file()


def test_demo_names_unreadable_and_missing_inputs(trained_files, tmp_path):
    _, _, opts = trained_files
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(UnreadableInputError, match="broken.png"):
        demo_main(["--config-file", DEMO_CONFIG, "--input", str(broken), "--output",
                   str(tmp_path / "o"), "--opts", *opts])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        demo_main(["--config-file", DEMO_CONFIG, "--input", str(tmp_path / "nothing_here*.png"),
                   "--output", str(tmp_path / "o"), "--opts", *opts])  # fmt: skip
