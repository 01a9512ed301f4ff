"""tools/export_model.py + efficientps_runtime: the exported model reproduces the PyTorch model.

A small demo model (EfficientNet-B0, 64 x 128 test size) with randomised statistics and every
detection kept is exported; the runtime (onnxruntime + NumPy fusion) must give the PyTorch
predictor's segments on the val images, its logits to 1e-4, and run with torch and detectron2
unimportable. The NumPy fusion is checked against the PyTorch fusion on the same inputs for
every pixel rule and the learned weights.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from efficientps.class_tables import PanopticClassTables
from efficientps.data import synthetic
from efficientps.demo import PanopticPredictor, setup_cfg
from efficientps.export import ExportError, export_metadata, export_onnx
from efficientps.modeling.meta_arch import EfficientPSPanopticFusion
from efficientps_runtime import (
    InputImageError,
    ModelFolderError,
    PanopticFusion,
    PrecisionError,
    Session,
)
from efficientps_runtime.fusion_params import FusionParams
from efficientps_runtime.quantize import CalibrationError, quantize_int8
from efficientps_runtime.session import resize_logits, resized_shape

from .helpers import (
    CONFIGS,
    DEMO_CONFIG,
    REPO,
    load_script,
    load_train_net,
    random_demo_checkpoint,
    randomise_batchnorm,
    registered_synthetic_train_split,
)

EXPORT_TOOL = str(REPO / "tools" / "export_model.py")
# Random weights score every class low: keep the detections so that the instance path runs.
SMALL = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05", "MODEL.EFFICIENTPS.FUSION_SCORE_THRESH", "0.05",
    "TEST.DETECTIONS_PER_IMAGE", "12", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


def load_export_tool():
    return load_script(EXPORT_TOOL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Val images, a checkpoint of a small random demo model, and its export."""
    root = tmp_path_factory.mktemp("deploy")
    images, opts = random_demo_checkpoint(root, "synth_deploy", SMALL, count=4, seed=3)
    model_dir = root / "exported"
    report = load_export_tool().main(
        ["--config-file", DEMO_CONFIG, "--output", str(model_dir),
         "--sample-image", str(images[0]), *opts]
    )  # fmt: skip
    predictor = PanopticPredictor(setup_cfg(DEMO_CONFIG, opts))
    return model_dir, images, predictor, report


def test_export_writes_model_and_metadata_and_checks_itself(exported):
    model_dir, _, predictor, report = exported
    assert sorted(os.listdir(model_dir)) == ["metadata.json", "model.onnx"]
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["input"]["channel_order"] == "RGB"
    assert metadata["thing_channels"] == list(predictor.model.class_tables.thing_channels)
    dataset_ids = {c["id"] for c in synthetic.CATEGORIES}
    assert {c["dataset_id"] for c in metadata["classes"]} == dataset_ids
    assert report["identical panoptic pixels (%)"] >= 99.9
    assert report["semantic logits (max abs diff / max abs)"] < 1e-4


def same_segments(ids_a, segments_a, ids_b, segments_b):
    """The same segments (category, thing or stuff) covering at least 99.9% the same pixels."""
    key_a = {s["id"]: (s["category_id"], s["isthing"]) for s in segments_a}
    key_b = {s["id"]: (s["category_id"], s["isthing"]) for s in segments_b}
    assert sorted(key_a.values()) == sorted(key_b.values())
    matched = 0
    for id_a, key in key_a.items():
        inside = ids_a == id_a
        ids, counts = np.unique(ids_b[inside], return_counts=True)
        best = ids[np.argmax(counts)]
        assert key_b.get(int(best)) == key
        matched += counts.max()
    matched += np.sum((ids_a == 0) & (ids_b == 0))
    assert matched / ids_a.size >= 0.999


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtime_reproduces_the_pytorch_predictor_on_the_val_images(exported, backend):
    model_dir, images, predictor, _ = exported
    session = Session(model_dir, backend=backend)
    things = 0
    for path in images:
        for image in (cv2.imread(str(path)), cv2.resize(cv2.imread(str(path)), (200, 90))):
            with torch.no_grad():
                reference = predictor(image)
            prediction = session.predict_full(image)
            sem = reference["sem_seg"].numpy()
            scale = np.abs(sem).max()
            assert np.abs(prediction.sem_logits - sem).max() <= 1e-4 * scale
            instances = reference["instances"]
            assert len(prediction.detections.scores) == len(instances)
            np.testing.assert_allclose(
                prediction.detections.boxes, instances.pred_boxes.tensor.numpy(), atol=1e-3
            )
            masks = instances.pred_mask_logits[:, 0].numpy()
            assert (
                np.abs(prediction.detections.mask_logits - masks).max()
                <= 1e-4 * np.abs(masks).max()
            )
            ids, segments = reference["panoptic_seg"]
            to_dataset = {c["channel"]: c["dataset_id"] for c in session.metadata["classes"]}
            segments = [{**s, "category_id": to_dataset[s["category_id"]]} for s in segments]
            same_segments(ids.numpy(), segments, prediction.panoptic, prediction.segments_info)
            things += sum(s["isthing"] for s in segments)
    assert things > 0  # the instance path ran


def test_learned_fusion_exports_and_the_runtime_fuses_as_pytorch(tmp_path):
    """The learned quality travels in metadata.json; the graph detects down to the candidate
    threshold (box score 0.05, under the detector's 0.5); both backends fuse as PyTorch."""
    opts = ["MODEL.EFFICIENTPS.FUSION", "learned", "TEST.DETECTIONS_PER_IMAGE", "12",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]  # fmt: skip
    images, opts = random_demo_checkpoint(tmp_path, "synth_learned", opts, count=2, seed=5)
    weights = opts[-1]
    checkpoint = torch.load(weights, weights_only=True)
    # A quality that is not the box score: random weights score every class about 1/4.
    checkpoint["model"]["panoptic_fusion.quality.feature_weights"] = torch.tensor(
        [1.0, 1.5, -1.0, 2.0, 0.5]
    )
    checkpoint["model"]["panoptic_fusion.quality.class_bias"] = torch.tensor([4.0, 3.0, 5.0])
    torch.save(checkpoint, weights)
    model_dir = tmp_path / "exported"
    load_export_tool().main(["--config-file", DEMO_CONFIG, "--output", str(model_dir),
                             "--sample-image", str(images[0]), *opts])  # fmt: skip
    quality = json.loads((model_dir / "metadata.json").read_text())["fusion"]["quality"]
    assert quality == {"feature_weights": [1.0, 1.5, -1.0, 2.0, 0.5], "class_bias": [4.0, 3.0, 5.0]}
    predictor = PanopticPredictor(setup_cfg(DEMO_CONFIG, opts))
    for backend in ("onnxruntime", "openvino"):
        session = Session(model_dir, backend=backend)
        things = 0
        for path in images:
            image = cv2.imread(str(path))
            with torch.no_grad():
                reference = predictor(image)
            prediction = session.predict_full(image)
            # Candidates under the detector's threshold reach the fusion.
            assert len(prediction.detections.scores) and prediction.detections.scores.min() < 0.5
            ids, segments = reference["panoptic_seg"]
            to_dataset = {c["channel"]: c["dataset_id"] for c in session.metadata["classes"]}
            segments = [{**s, "category_id": to_dataset[s["category_id"]]} for s in segments]
            same_segments(ids.numpy(), segments, prediction.panoptic, prediction.segments_info)
            things += sum(s["isthing"] for s in segments)
        assert things > 0, backend  # the learned quality fused detections the box score would not


def test_precision_is_float32_unless_asked_on_every_cpu(exported):
    """OpenVINO's CPU plugin picks bfloat16 by itself on CPUs with AVX512-BF16/AMX; the session
    asks for float32, so results do not depend on the machine. bf16 is explicit, and refused
    where the CPU would emulate it or the backend has none."""
    model_dir, images, predictor, _ = exported
    session = Session(model_dir, backend="openvino")
    assert session.precision == "fp32"
    assert session._run.inference_precision == "<Type: 'float32'>"
    with pytest.raises(PrecisionError, match="needs backend='openvino'"):
        Session(model_dir, precision="bf16")
    with pytest.raises(PrecisionError, match="expected one of"):
        Session(model_dir, backend="openvino", precision="fp8")
    import openvino

    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(PrecisionError, match="no native bfloat16"):
            Session(model_dir, backend="openvino", precision="bf16")
        return
    bf16 = Session(model_dir, backend="openvino", precision="bf16")
    assert bf16._run.inference_precision == "<Type: 'bfloat16'>"
    image = cv2.imread(str(images[0]))
    exact = session.predict_full(image).sem_logits
    reduced = bf16.predict_full(image).sem_logits
    error = np.abs(reduced - exact).max() / np.abs(exact).max()
    assert 1e-6 < error < 0.1  # really computed in bf16 (8 mantissa bits), and still close


def test_no_detection_is_zero_rows_on_every_backend(tmp_path):
    """A model whose detections all fall below its score threshold on a blank image: 0 rows
    from PyTorch, onnxruntime and OpenVINO (which returned one uninitialised row, class
    990375315, before the exported NMS lost its early-return branch)."""
    opts = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]  # score threshold 0.5
    images, opts = random_demo_checkpoint(tmp_path, "synth_empty", opts, count=1, seed=4)
    model_dir = tmp_path / "exported"
    load_export_tool().main(["--config-file", DEMO_CONFIG, "--output", str(model_dir),
                             "--sample-image", str(images[0]), *opts])  # fmt: skip
    predictor = PanopticPredictor(setup_cfg(DEMO_CONFIG, opts))
    for blank in (np.zeros((64, 128, 3), np.uint8), np.full((90, 200, 3), 255, np.uint8)):
        with torch.no_grad():
            reference = predictor(blank)
        assert len(reference["instances"]) == 0
        for backend in ("onnxruntime", "openvino"):
            prediction = Session(model_dir, backend=backend).predict_full(blank)
            assert len(prediction.detections.scores) == 0, backend
            ids, segments = reference["panoptic_seg"]
            assert np.array_equal(prediction.panoptic, ids.numpy()), backend
            assert len(prediction.segments_info) == len(segments)
    # int8 calibration on images without detections cannot range the mask head: refused.
    blank_file = tmp_path / "blank.png"
    cv2.imwrite(str(blank_file), np.zeros((64, 128, 3), np.uint8))
    with pytest.raises(CalibrationError, match="never reached .* detects something"):
        quantize_int8(model_dir, [str(blank_file)])


@pytest.mark.parametrize(
    "height, width", [(30, 7000), (7000, 30), (8, 128), (128, 8), (1, 1), (2, 1000), (1000, 1)]
)
def test_extreme_image_sizes_same_decision_in_both_paths(exported, height, width):
    """16:1 and wider used to fail inside the graph (the test-time proposal count was a
    constant); a side that the resize makes 0 pixels is refused the same way by both."""
    model_dir, _, predictor, _ = exported
    session = Session(model_dir)
    image = np.random.default_rng(height * width).integers(0, 255, (height, width, 3), np.uint8)
    try:
        with torch.no_grad():
            reference = predictor(image)
    except InputImageError as error:
        with pytest.raises(InputImageError, match="too elongated") as runtime_error:
            session.predict(image)
        assert str(runtime_error.value) == str(error)
        assert max(height, width) / min(height, width) > 2 * 128  # refused only past the limit
        return
    prediction = session.predict_full(image)
    assert len(prediction.detections.scores) == len(reference["instances"])
    ids, segments = reference["panoptic_seg"]
    to_dataset = {c["channel"]: c["dataset_id"] for c in session.metadata["classes"]}
    segments = [{**s, "category_id": to_dataset[s["category_id"]]} for s in segments]
    same_segments(ids.numpy(), segments, prediction.panoptic, prediction.segments_info)


def assert_graph_outputs_match(got, expected):
    """onnxruntime's graph outputs equal the PyTorch wrapper's: semantic logits to 1e-4
    relative; the same detections, each matched to the runtime's with the nearest box (random
    weights give near-equal scores, whose order float rounding may swap)."""
    assert np.abs(got[0] - expected[0]).max() <= 1e-4 * np.abs(expected[0]).max()
    assert len(got[2]) == len(expected[2]) > 0
    for box, score, label, mask in zip(*expected[1:]):
        j = np.abs(got[1] - box).sum(1).argmin()
        assert np.abs(got[1][j] - box).max() <= 1e-3 and got[3][j] == label
        assert abs(got[2][j] - score) <= 1e-5
        assert np.abs(got[4][j] - mask).max() <= 1e-4 * np.abs(mask).max()


def test_graph_takes_other_sizes_than_it_was_recorded_at(exported):
    """Dynamic H and W inside the graph (the runtime resizes to the test size first)."""
    model_dir, images, predictor, _ = exported
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"))
    from efficientps.export import exportable_copy

    wrapper = exportable_copy(predictor.model)
    image = cv2.imread(str(images[1]))[:, :, ::-1]
    for height, width in ((64, 128), (96, 160), (130, 250)):
        resized = np.ascontiguousarray(cv2.resize(image, (width, height)))
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(torch.as_tensor(resized))]
        got = session.run(None, {"image": resized})
        assert got[0].shape == expected[0].shape == (8, height, width)
        assert_graph_outputs_match(got, expected)


def test_runtime_runs_without_torch_detectron2_or_numba(exported, tmp_path):
    model_dir, images, _, _ = exported
    blocked = (
        "import sys, runpy\n"
        "for name in ('torch', 'torchvision', 'detectron2', 'efficientps', 'numba',\n"
        "             'imagecodecs', 'pycocotools'):\n"
        "    sys.modules[name] = None  # import fails\n"
        "sys.argv = ['efficientps_runtime'] + sys.argv[1:]\n"
        "runpy.run_module('efficientps_runtime', run_name='__main__')\n"
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", blocked, "--model", str(model_dir), "--input",
         str(images[0].parent), "--output", str(out)],
        capture_output=True, text=True, cwd=str(REPO), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for path in images:
        stem = out / path.stem
        ids = cv2.imread(f"{stem}_panoptic.png")[..., ::-1].astype(np.int64)
        ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
        segments = json.loads(open(f"{stem}_panoptic.json").read())["segments_info"]
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in segments}
        assert cv2.imread(f"{stem}_vis.png").shape == (64, 128, 3)


def test_bad_inputs_get_clear_errors(exported, tmp_path):
    model_dir, _, predictor, _ = exported
    session = Session(model_dir)
    with pytest.raises(InputImageError, match="uint8"):
        session.predict(np.zeros((64, 128, 3), np.float32))
    with pytest.raises(InputImageError, match=r"\(H, W, 3\)"):
        session.predict(np.zeros((64, 128), np.uint8))
    with pytest.raises(InputImageError, match=r"\(H, W, 3\)"):
        session.predict(np.zeros((64, 128, 4), np.uint8))
    with pytest.raises(ModelFolderError, match="metadata.json"):
        Session(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        Session(tmp_path)
    with pytest.raises(ExportError, match="META_ARCHITECTURE"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), np.zeros((64, 64, 3), np.uint8), "x.onnx")
    with pytest.raises(ExportError, match="opset"):
        export_onnx(predictor.model, np.zeros((64, 64, 3), np.uint8), "x.onnx", opset=11)
    cfg = setup_cfg(DEMO_CONFIG, ["DATASETS.TEST", "('no_such_dataset',)"])
    with pytest.raises(ExportError, match="DATASETS.TEST: dataset 'no_such_dataset'"):
        export_metadata(cfg, predictor.model)
    cfg = setup_cfg(DEMO_CONFIG, ["INPUT.FORMAT", "L"])
    with pytest.raises(ExportError, match="INPUT.FORMAT"):
        export_metadata(cfg, predictor.model)


def random_fusion_inputs(seed, height=48, width=80, detections=6, channels=7, things=(4, 5, 6)):
    rng = np.random.default_rng(seed)
    sem = rng.normal(0, 2, (channels, height, width)).astype(np.float32)
    x0 = rng.uniform(-5, width - 10, detections)
    y0 = rng.uniform(-5, height - 10, detections)
    boxes = np.stack(
        [x0, y0, x0 + rng.uniform(4, 40, detections), y0 + rng.uniform(4, 30, detections)], 1
    ).astype(np.float32)
    scores = rng.uniform(0.3, 1.0, detections).astype(np.float32)
    classes = rng.integers(0, len(things), detections)
    masks = rng.normal(0, 3, (detections, 28, 28)).astype(np.float32)
    return sem, boxes, scores, classes, masks


@pytest.mark.parametrize("pixel_rule", ["argmax", "owner", "authors"])
@pytest.mark.parametrize("learned", [False, True])
def test_runtime_fusion_equals_the_model_fusion_module(pixel_rule, learned):
    """The model's fusion module (torch) and the runtime's (NumPy), built from the same
    settings and learned numbers (through metadata.json's "fusion"), on the same detections."""
    stuff, things = (0, 1, 2, 3), (4, 5, 6)
    params = FusionParams(score_thresh=0.5, overlap_thresh=0.5, mask_logit_scale=2.0, stuff_area=30,
                          stuff_area_reference=(48, 80), pixel_rule=pixel_rule)  # fmt: skip
    model_fusion = EfficientPSPanopticFusion(
        class_tables=PanopticClassTables(stuff, things), params=params, learned=learned
    )
    if learned:  # a quality that is not the box score: every feature and class counts
        with torch.no_grad():
            model_fusion.quality.feature_weights.copy_(torch.tensor([0.8, 1.5, -2.0, 2.5, 0.3]))
            model_fusion.quality.class_bias.copy_(torch.tensor([0.2, -0.4, 0.1]))
    metadata = {"stuff_channels": list(stuff), "thing_channels": list(things),
                "fusion": json.loads(json.dumps(model_fusion.to_metadata()))}  # fmt: skip
    runtime_fusion = PanopticFusion.from_metadata(metadata)
    for seed in range(4):
        sem, boxes, scores, classes, masks = random_fusion_inputs(seed, things=things)
        ids, segments = runtime_fusion(sem, boxes, scores, classes, masks)
        detections = Instances((48, 80), pred_boxes=Boxes(torch.as_tensor(boxes)),
                               scores=torch.as_tensor(scores),
                               pred_classes=torch.as_tensor(classes),
                               pred_mask_logits=torch.as_tensor(masks)[:, None])  # fmt: skip
        with torch.no_grad():
            expected_ids, expected = model_fusion(torch.as_tensor(sem), detections)
        assert np.array_equal(ids, expected_ids.numpy())
        without_score = [[{k: v for k, v in s.items() if k != "score"} for s in segs]
                         for segs in (segments, expected)]  # fmt: skip
        assert without_score[0] == without_score[1]
        scores_of = [[s["score"] for s in segs if s["isthing"]] for segs in (segments, expected)]
        assert scores_of[0] == pytest.approx(scores_of[1], abs=1e-6)
        assert any(s["isthing"] for s in segments)
        if learned:  # the learned quality, not the box score, ranked them
            kept = [s["instance_index"] for s in segments if s["isthing"]]
            assert scores_of[0] != pytest.approx(scores[kept].tolist(), abs=1e-3)


def test_resize_helpers_match_detectron2():
    from detectron2.data.transforms import ResizeShortestEdge
    from torch.nn import functional as F

    for height, width in ((1024, 2048), (375, 1242), (480, 640), (900, 700)):
        augmentation = ResizeShortestEdge([512, 512], 1024)
        transform = augmentation.get_transform(np.zeros((height, width, 3), np.uint8))
        assert resized_shape(height, width, 512, 1024) == (transform.new_h, transform.new_w)
    logits = np.random.default_rng(0).normal(0, 3, (5, 33, 61)).astype(np.float32)
    for size in ((66, 122), (20, 40), (33, 61)):
        expected = F.interpolate(torch.as_tensor(logits)[None], size=size, mode="bilinear",
                                 align_corners=False)[0].numpy()  # fmt: skip
        np.testing.assert_allclose(resize_logits(logits, *size), expected, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        "Cityscapes-PanopticSegmentation/efficientps_b5_2wayfpn_bs16_1024x2048.yaml",
        "Cityscapes-PanopticSegmentation/efficientps_b5_official.yaml",
        "KITTI-PanopticSegmentation/efficientps_b5_2wayfpn_bs16_384x1280.yaml",
        "KITTI-PanopticSegmentation/efficientps_b5_official.yaml",
    ],
)
def test_paper_and_official_configs_export(config, tmp_path):
    """EfficientNet-B5 with the paper's ROIAlignV2 (opset 16+) and the authors' unaligned
    ROIAlign, at a small test size: the graph gives the PyTorch model's outputs, and the
    metadata names the dataset's classes. (Vistas configs read their class tables from the
    dataset's config json, which is not here.)"""
    import onnxruntime

    from efficientps.export import exportable_copy

    cfg = setup_cfg(str(CONFIGS / config), ["MODEL.DEVICE", "cpu", *SMALL])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomise_batchnorm(model)
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), np.uint8)
    # The authors' unaligned ROIAlign exports from opset 11 (RoiAlign-10); ROIAlignV2 needs 16.
    opset = 11 if "official" in config else 17
    export_onnx(model, image, str(tmp_path / "model.onnx"), opset=opset)
    assert len(export_metadata(cfg, model)["classes"]) == 19
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    with torch.no_grad():
        expected = [t.numpy() for t in exportable_copy(model)(torch.as_tensor(image))]
    assert_graph_outputs_match(session.run(None, {"image": image}), expected)


@pytest.mark.slow
def test_trained_model_exports_with_the_pytorch_segments(tmp_path):
    """Trained weights (random ones make near-ties): the tiny demo trained for 150 iterations
    in this process, exported, and checked by the export tool on its val images."""
    root = tmp_path / "datasets"
    names = {
        split: registered_synthetic_train_split(root / "synthetic", "synth_deploy", count, 1, split)
        for split, count in (("train", 12), ("val", 4))
    }
    common = [
        "INPUT.CROP.SIZE", "[64, 128]", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "SOLVER.IMS_PER_BATCH",
        "2", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TRAIN", f"('{names['train']}',)",
        "DATASETS.TEST", f"('{names['val']}',)",
    ]  # fmt: skip
    train_net = load_train_net()
    train_net.main(train_net.parse_args(
        ["--config-file", DEMO_CONFIG, *common, "OUTPUT_DIR", str(tmp_path / "train"),
         "SOLVER.MAX_ITER", "150", "SOLVER.STEPS", "(120,)", "TEST.EVAL_PERIOD", "0"]
    ))  # fmt: skip
    images = str(root / "synthetic" / "leftImg8bit" / "*" / "synth" / "*.png")
    report = load_export_tool().main(
        ["--config-file", DEMO_CONFIG, "--output", str(tmp_path / "exported"),
         "--check-images", images, *common,
         "MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth")]
    )  # fmt: skip
    worst = report["check images"]
    assert worst["images"] == 16
    assert worst["min identical panoptic pixels (%)"] >= 99.9
    assert worst["max semantic logit diff (relative)"] <= 1e-4
    assert worst["max mask logit diff (relative)"] <= 1e-4
    assert worst["images with another detection count"] == 0
    assert worst["detections (PyTorch)"] > 0


def test_runtime_cli_processes_every_readable_image_and_reports_the_rest(
    exported, tmp_path, capsys
):
    """A batch goes on past unreadable files (each reported on one line, no traceback) and
    exits non-zero at the end; a bad model folder or an empty glob is one line, status 2."""
    from efficientps_runtime.__main__ import main as runtime_main

    model_dir, images, _, _ = exported
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a_good.png").write_bytes(images[0].read_bytes())
    (inputs / "b_broken.png").write_bytes(b"not a png")
    (inputs / "c_empty.png").write_bytes(b"")
    (inputs / "d_folder.png").mkdir()
    (inputs / "e_truncated.png").write_bytes(images[1].read_bytes()[:200])
    (inputs / "f_good.png").write_bytes(images[1].read_bytes())
    out = tmp_path / "out"
    status = runtime_main(["--model", str(model_dir), "--input", str(inputs / "*.png"),
                           "--output", str(out)])  # fmt: skip
    stdout, stderr = capsys.readouterr()
    assert status == 1
    assert sorted(p.name for p in out.glob("*_panoptic.png")) == [
        "a_good_panoptic.png",
        "f_good_panoptic.png",
    ]
    assert "wrote 2 panoptic predictions" in stdout
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for name, reason in (("b_broken", "not an image"), ("c_empty", "empty file"),
                         ("d_folder", "a folder"), ("e_truncated", "not an image")):  # fmt: skip
        assert any(f"{name}.png: {reason}" in line for line in errors), (name, stderr)
    assert errors[-1].startswith("error: 4 of 6 inputs failed")
    assert "Traceback" not in stderr
    for arguments, message in (
        (["--model", str(model_dir), "--input", str(tmp_path / "missing*.png")], "matches no"),
        (["--model", str(tmp_path), "--input", str(inputs / "a_good.png")], "no metadata.json"),
    ):
        assert runtime_main([*arguments, "--output", str(out)]) == 2
        stderr = capsys.readouterr().err
        assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_garbage_graph_outputs_fail_by_name(exported):
    """A backend's uninitialised class ids (OpenVINO gave 990375315 for an empty output) or
    inconsistent shapes fail with GraphOutputError, not an IndexError in the fusion."""
    from efficientps_runtime import GraphOutputError
    from efficientps_runtime.session import GraphOutputs

    model_dir, images, _, _ = exported
    session = Session(model_dir)
    real = session._run
    outputs, _ = session.run_graph(cv2.imread(str(images[0])))
    bad_class = GraphOutputs(outputs.sem_logits, np.zeros((1, 4), np.float32),
                             np.ones(1, np.float32), np.array([990375315]),
                             np.zeros((1, 28, 28), np.float32))  # fmt: skip
    for garbage, message in (
        (bad_class, r"thing classes \[990375315\]; expected 0\.\.2"),
        (replace(outputs, sem_logits=outputs.sem_logits[:3]), "semantic logits of shape"),
        (replace(bad_class, boxes=np.zeros((0, 4))), "boxes of shape"),
    ):
        fields = [garbage.sem_logits, garbage.boxes, garbage.scores, garbage.classes,
                  garbage.mask_logits]  # fmt: skip
        session._run = lambda image, fields=fields: fields
        with pytest.raises(GraphOutputError, match=message):
            session.predict(cv2.imread(str(images[0])))
    session._run = real
