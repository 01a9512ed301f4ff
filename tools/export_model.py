#!/usr/bin/env python
"""Export a trained EfficientPS for the torch-free runtime, and check the export.

    python tools/export_model.py --config-file CFG --output DIR [--sample-image IMG] \
        [--quantize int8 --calibration-images 'train/*.png'] \
        MODEL.WEIGHTS path/to/model_final.pth [KEY VALUE ...]

Writes DIR/model.onnx and DIR/metadata.json (see efficientps/export.py for what is inside the
graph), then runs the exported model with ``efficientps_runtime`` on the sample image (or on a
generated one at the test size) next to the PyTorch model and prints the largest differences
and the share of identical panoptic pixels. Run it with ``python -m efficientps_runtime``.
``--quantize int8`` also writes DIR/model_int8_{onnxruntime,openvino}.onnx, calibrated on your
images (efficientps_runtime/quantize.py), and prints how far it is from the float32 graph.
"""

import argparse
import glob
import os
import sys
import time

import cv2
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from efficientps.demo import PanopticPredictor, setup_cfg  # noqa: E402
from efficientps.export import ExportError, export_metadata, export_onnx  # noqa: E402
from efficientps_runtime import Session  # noqa: E402
from efficientps_runtime.agreement import matching_pixel_share  # noqa: E402
from efficientps_runtime.inputs import expand_inputs  # noqa: E402
from efficientps_runtime.quantize import quantize_int8  # noqa: E402
from efficientps_runtime.session import BACKENDS, graph_input, write_metadata  # noqa: E402


def sample_image(path, cfg):
    """The given image (BGR), or a textured one at the test size."""
    if path:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"--sample-image {path}: not an image OpenCV can read")
        return image
    height = cfg.INPUT.MIN_SIZE_TEST or 512
    width = min(2 * height, cfg.INPUT.MAX_SIZE_TEST or 2 * height)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3), np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def compare(predictor, session, image_bgr):
    """Largest differences between the PyTorch model and the runtime on one image."""
    with torch.no_grad():
        reference = predictor(image_bgr)
    prediction = session.predict_full(image_bgr, channel_order="BGR")
    sem = reference["sem_seg"].numpy()
    instances = reference["instances"]
    report = {
        "semantic logits (max abs diff / max abs)": _relative(prediction.sem_logits, sem),
        "detections (PyTorch, runtime)": (len(instances), len(prediction.detections.scores)),
    }
    if len(instances) == len(prediction.detections.scores) and len(instances):
        report["boxes (max abs diff, px)"] = float(
            np.abs(prediction.detections.boxes - instances.pred_boxes.tensor.numpy()).max()
        )
        report["mask logits (max abs diff / max abs)"] = _relative(
            prediction.detections.mask_logits, instances.pred_mask_logits[:, 0].numpy()
        )
    ids = reference["panoptic_seg"][0].numpy()
    report["identical panoptic pixels (%)"] = 100.0 * matching_pixel_share(ids, prediction.panoptic)
    return report


def _relative(got, expected):
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="folder for model.onnx + metadata.json")
    parser.add_argument("--sample-image", help="image to record the graph with and check on")
    parser.add_argument(
        "--check-images",
        action="append",
        default=[],
        help="also compare on the images of this glob (repeatable)",
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--backend", default="onnxruntime", choices=BACKENDS, help="runtime for the self-check"
    )
    parser.add_argument(
        "--quantize", choices=["int8"], help="also write int8 graphs (model_int8_*.onnx)"
    )
    parser.add_argument(
        "--calibration-images",
        action="append",
        default=[],
        help="--quantize: images like those the model will see (file, glob or folder; "
        "repeatable)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs (MODEL.WEIGHTS)")
    args = parser.parse_args(argv)
    calibration = calibration_paths(args)
    cfg = setup_cfg(args.config_file, ["MODEL.DEVICE", "cpu"] + list(args.opts))
    if not cfg.MODEL.WEIGHTS:
        raise ExportError("MODEL.WEIGHTS: give the trained weights to export")
    predictor = PanopticPredictor(cfg)
    image = sample_image(args.sample_image, cfg)
    os.makedirs(args.output, exist_ok=True)
    metadata = export_metadata(cfg, predictor.model)
    # The graph is recorded on the image as the runtime will feed it (resized, channel order).
    session_input = graph_input(image, metadata["input"], channel_order="BGR")
    start = time.perf_counter()
    export_onnx(predictor.model, session_input, os.path.join(args.output, "model.onnx"), args.opset)
    write_metadata(metadata, args.output)
    print(
        f"wrote {args.output}/model.onnx and metadata.json in {time.perf_counter() - start:.1f} s"
    )
    session = Session(args.output, backend=args.backend)
    report = compare(predictor, session, image)
    print("check on the sample image:")
    for name, value in report.items():
        print(f"  {name}: {value}")
    if args.check_images:
        report["check images"] = check_images(predictor, session, args.check_images)
    if args.quantize:
        report["int8"] = quantize(args, calibration, session, image)
    return report


def calibration_paths(args):
    """The --calibration-images as paths (checked before anything is exported)."""
    if bool(args.quantize) != bool(args.calibration_images):
        raise SystemExit("--quantize int8 and --calibration-images go together")
    if not args.quantize:
        return []
    try:
        return expand_inputs(args.calibration_images, option="--calibration-images")
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from error


def quantize(args, paths, float_session, image):
    """model_int8.onnx calibrated on ``paths``, compared with the float32 graph on ``image``."""
    start = time.perf_counter()
    quantize_int8(args.output, paths, progress=lambda p: tqdm(p, "calibration"))
    print(f"wrote the int8 graphs (one per backend) in {time.perf_counter() - start:.1f} s "
          f"({len(paths)} calibration images)")  # fmt: skip
    reference = float_session.predict_full(image, channel_order="BGR")
    int8 = Session(args.output, backend=args.backend, precision="int8")
    prediction = int8.predict_full(image, channel_order="BGR")
    report = {
        "same semantic class (%)": 100.0 * float(np.mean(
            reference.sem_logits.argmax(0) == prediction.sem_logits.argmax(0))),
        "detections (float32, int8)": (len(reference.detections.scores),
                                       len(prediction.detections.scores)),
        "identical panoptic pixels (%)": 100.0 * matching_pixel_share(
            reference.panoptic, prediction.panoptic),
    }  # fmt: skip
    print("int8 against the float32 graph on the sample image (benchmarks/precision.py "
          "measures PQ, mIoU and AP on a val set):")  # fmt: skip
    for name, value in report.items():
        print(f"  {name}: {value}")
    return report


def check_images(predictor, session, patterns):
    """``compare`` over many images; prints and returns the worst case of each measure."""
    paths = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(pattern))})
    if not paths:
        raise FileNotFoundError(f"--check-images {patterns}: no file matches")
    worst = {"images": len(paths), "min identical panoptic pixels (%)": 100.0,
             "max semantic logit diff (relative)": 0.0, "max mask logit diff (relative)": 0.0,
             "images with another detection count": 0, "detections (PyTorch)": 0}  # fmt: skip
    for path in tqdm(paths, desc="export check", unit="image"):
        report = compare(predictor, session, cv2.imread(path, cv2.IMREAD_COLOR))
        worst["min identical panoptic pixels (%)"] = min(
            worst["min identical panoptic pixels (%)"], report["identical panoptic pixels (%)"]
        )
        worst["max semantic logit diff (relative)"] = max(
            worst["max semantic logit diff (relative)"],
            report["semantic logits (max abs diff / max abs)"],
        )
        worst["max mask logit diff (relative)"] = max(
            worst["max mask logit diff (relative)"],
            report.get("mask logits (max abs diff / max abs)", 0.0),
        )
        count = report["detections (PyTorch, runtime)"]
        worst["images with another detection count"] += count[0] != count[1]
        worst["detections (PyTorch)"] += count[0]
    print(f"check on {len(paths)} images (worst case of each):")
    for name, value in worst.items():
        print(f"  {name}: {value}")
    return worst


if __name__ == "__main__":
    main()
