#!/usr/bin/env python
"""What reduced precision costs: PQ, mIoU and AP of the exported model in fp32, bf16 and int8.

    python benchmarks/precision.py [--run output/learning/runs/demo_config-seed1]
                                   [--calibration-images 40]

The model is the learning benchmark's (benchmarks/learning.py: the demo config trained on its
Cityscapes-format set; trained first if the run is missing, about 10 minutes). It is exported
with tools/export_model.py, quantized to int8 with the first --calibration-images images of
the *train* split, and evaluated on the 30 val images with our evaluator (PQ, mIoU, mask AP)
in every precision each backend offers here: the PyTorch predictor, onnxruntime fp32 and int8,
OpenVINO fp32, bf16 (only on a CPU with native bfloat16) and int8. Masks for AP are pasted
from the runtime's detections with detectron2's paste (what the PyTorch model does). The
comparison is paired (one model, the same images), so the differences are the precision's.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(REPO, "output", "learning")
# detectron2 registers its Cityscapes splits under this root when it is first imported.
os.environ["DETECTRON2_DATASETS"] = os.path.join(OUTPUT, "datasets")

from common import machine_line, print_table  # noqa: E402

RUN = os.path.join(OUTPUT, "runs", "demo_config-seed1")
VAL = "cityscapes_fine_panoptic_val"
METRICS = (("PQ", "panoptic_seg"), ("PQ_th", "panoptic_seg"), ("PQ_st", "panoptic_seg"),
           ("mIoU", "sem_seg"), ("AP", "segm"))  # fmt: skip
ROWS = (("PyTorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
        ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))  # fmt: skip


def trained_run(run, iters=500):
    """The learning benchmark's run of the demo config (seed 1) at ``run``, with its dataset;
    both made if missing. Returns the run's absolute path."""
    from cityscapes_scenes import make_cityscapes_set
    from learning import train_and_evaluate

    run_dir = os.path.abspath(run)
    make_cityscapes_set(os.path.join(os.environ["DETECTRON2_DATASETS"], "cityscapes"))
    if not os.path.isfile(os.path.join(run_dir, "model_final.pth")):
        train_and_evaluate(run_dir, os.environ["DETECTRON2_DATASETS"], [], 1, iters)
    return run_dir


def run_predictor(run_dir, opts=()):
    """The PyTorch predictor of a run's final weights (``opts``: further config overrides)."""
    from efficientps.demo import PanopticPredictor, setup_cfg

    weights = os.path.join(run_dir, "model_final.pth")
    cfg = setup_cfg(os.path.join(run_dir, "config.yaml"), ["MODEL.WEIGHTS", weights, *opts])
    return PanopticPredictor(cfg)


def export(run_dir, folder, calibration, sample_image):
    """model.onnx + the int8 graphs of the run in ``folder`` (kept: not redone)."""
    if os.path.isfile(os.path.join(folder, "model_int8_openvino.onnx")):
        return folder
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import export_model

    calibration_args = [f"--calibration-images={path}" for path in calibration]
    export_model.main(
        ["--config-file", os.path.join(run_dir, "config.yaml"), "--output", folder,
         "--sample-image", sample_image, "--quantize", "int8", *calibration_args,
         "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth")]
    )  # fmt: skip
    return folder


def _images(folder):
    return sorted(os.path.join(root, n) for root, _, names in os.walk(folder) for n in names)


class RuntimeModel:
    """An efficientps_runtime Session with the PyTorch model's outputs (evaluator inputs)."""

    def __init__(self, session):
        self.session = session
        self.channel = {c["dataset_id"]: c["channel"] for c in session.metadata["classes"]}

    def __call__(self, image_bgr):
        import torch
        from detectron2.layers import paste_masks_in_image
        from detectron2.structures import Boxes, Instances

        prediction = self.session.predict_full(image_bgr, channel_order="BGR")
        height, width = image_bgr.shape[:2]
        detections = prediction.detections
        boxes = Boxes(torch.from_numpy(detections.boxes))
        instances = Instances((height, width), pred_boxes=boxes)
        instances.scores = torch.from_numpy(detections.scores)
        instances.pred_classes = torch.from_numpy(detections.classes.astype("int64"))
        probabilities = torch.from_numpy(detections.mask_logits).sigmoid()
        instances.pred_masks = paste_masks_in_image(probabilities, boxes, (height, width), 0.5)
        segments = [dict(s, category_id=self.channel[s["category_id"]])
                    for s in prediction.segments_info]  # fmt: skip
        return {
            "sem_seg": torch.from_numpy(prediction.sem_logits),
            "panoptic_seg": (torch.from_numpy(prediction.panoptic), segments),
            "instances": instances,
        }


def evaluate(model, records, tables, reference=None):
    """Metrics of ``model`` on the val records, seconds per image, and the share of panoptic
    pixels equal to ``reference`` (a list of id maps), and its own id maps."""
    import cv2
    import torch
    from tqdm import tqdm

    from efficientps.evaluation.panoptic_evaluator import EfficientPSEvaluator
    from efficientps_runtime.agreement import matching_pixel_share

    evaluator = EfficientPSEvaluator(VAL, class_tables=tables, distributed=False)
    seconds, same, ids = 0.0, [], []
    for index, record in enumerate(tqdm(records, desc="val", unit="image", leave=False)):
        image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
        start = time.perf_counter()
        with torch.no_grad():
            output = model(image)
        seconds += time.perf_counter() - start
        evaluator.process([record], [output])
        ids.append(output["panoptic_seg"][0].numpy())
        if reference is not None:
            same.append(matching_pixel_share(reference[index], ids[-1]))
    results = evaluator.evaluate()
    metrics = {name: results[group][name] for name, group in METRICS}
    agreement = 100.0 * sum(same) / len(same) if same else 100.0
    return metrics, seconds / len(records), agreement, ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=RUN, help="a learning-benchmark run (trained if missing)")
    parser.add_argument("--calibration-images", type=int, default=40)
    args = parser.parse_args(argv)
    run_dir = trained_run(args.run)
    images = os.path.join(os.environ["DETECTRON2_DATASETS"], "cityscapes", "leftImg8bit")
    calibration = _images(os.path.join(images, "train"))[: args.calibration_images]
    folder = export(run_dir, os.path.join(run_dir, "export"), calibration,
                    _images(os.path.join(images, "val"))[0])  # fmt: skip

    from detectron2.data import DatasetCatalog

    from efficientps_runtime import PrecisionError, Session

    predictor = run_predictor(run_dir)
    tables = predictor.model.class_tables
    records = DatasetCatalog.get(VAL)
    rows, reference, fp32 = [], None, None
    for backend, precision in ROWS:
        if backend == "PyTorch":
            model = predictor
        else:
            try:
                model = RuntimeModel(Session(folder, backend=backend, precision=precision))
            except PrecisionError as error:
                print(f"{backend} {precision}: not run ({error})")
                continue
        metrics, seconds, same, ids = evaluate(model, records, tables, reference)
        reference = reference or ids
        fp32 = fp32 or metrics
        rows.append(
            [backend, precision]
            + [f"{metrics[m]:.1f} ({metrics[m] - fp32[m]:+.1f})" for m, _ in METRICS]
            + [f"{same:.2f}", f"{1000 * seconds:.0f}"]
        )
        print(rows[-1], flush=True)
    print_table(
        f"Precision: the learning benchmark's demo model ({os.path.basename(run_dir)}), "
        f"{len(records)} val images at 128x256; int8 calibrated on {len(calibration)} train "
        f"images (min/max); (difference to PyTorch fp32). {machine_line()}",
        ["backend", "precision"] + [m for m, _ in METRICS]
        + ["% pixels as PyTorch", "ms/img"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
