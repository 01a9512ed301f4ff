#!/usr/bin/env python
"""End-to-end CPU inference: EfficientPS-b5 (Cityscapes config) vs detectron2's Panoptic FPN R50.

    python benchmarks/inference.py [--sizes 1024x2048 512x1024] [--runs 3]

Image tensor in, panoptic output out (postprocessing and fusion included), random weights, 19
classes for both, under torch.no_grad (as detectron2's DefaultPredictor and inference_on_dataset
run models). Both models are forced to the same instance workload: score threshold 0 and 50
detections per image (random weights would otherwise give each a different number). Every
(model, variant, size) runs in its own child process, so its peak RSS is its own. Variants:
  plain            conv -> BN -> activation and torchvision's ROIAlign kernel: the training
                   path, with MODEL.EFFICIENTPS.INFERENCE_FOLD_BN False, no channels_last,
                   ROI_HEADS.FAST_CPU_ROI_ALIGN False
  user path        what a user runs: build_model(cfg), DetectionCheckpointer(model).load(file),
                   model.eval(), model(inputs) -- default config, no other call
  user path, bf16  the same with MODEL.EFFICIENTPS.INFERENCE_DTYPE bfloat16
  user path, fp16  the same with float16 (GPUs; Panoptic FPN then also runs under float16
                   autocast, a row of its own)
  onnxruntime      the exported model (tools/export_model.py's export) under efficientps_runtime:
                   uint8 image in, panoptic out, NumPy fusion included (test size = the input),
                   timed in a process without torch (benchmarks/runtime_worker.py)
  openvino         the same with the runtime's OpenVINO backend (CPU plugin)
  onnxruntime int8, openvino int8
                   the runtime with the backend's int8 graph (tools/export_model.py --quantize
                   int8), calibrated on two other random images of the size
  openvino bf16    the runtime with OpenVINO in bfloat16 (CPUs with AVX512-BF16 or AMX)
  torch.compile    the user path with its norms folded (fold_for_export) and the backbone and
                   semantic head compiled by torch.compile (compilation in the warm-up)
Outputs of each variant are compared with the plain model's (same panoptic ids, semantic logits)
in a separate child process. On a GPU (--device cuda) the default variants are plain, user path
and its fp16 and bf16 forms (the runtime is CPU-only), and memory is CUDA's peak allocation.
"""

import argparse
import json
import os
import tempfile

import numpy as np
import torch
from common import (
    build,
    efficientps_cfg,
    machine_line,
    median_seconds,
    panoptic_fpn_r50_cfg,
    peak_memory_mb,
    print_table,
    run_worker,
)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from efficientps.modeling import configure_inference, fold_for_export
from efficientps_runtime.agreement import matching_pixel_share

DETECTIONS = 50
RUNTIME_VARIANTS = ["onnxruntime", "onnxruntime int8", "openvino", "openvino bf16", "openvino int8"]
VARIANTS = ["plain", "user path", "user path, bf16", *RUNTIME_VARIANTS, "torch.compile"]
GPU_VARIANTS = ["plain", "user path", "user path, fp16", "user path, bf16"]
REDUCED = {"fp16": "float16", "bf16": "bfloat16"}


def precision_of(variant):
    """What a variant computes in: the runtime's precision, the user path's inference dtype."""
    if runtime_variant(variant):
        return runtime_variant(variant)[1]
    return variant[-4:] if variant[-4:] in REDUCED else "fp32"


def runtime_variant(variant):
    """(backend, precision) of a runtime variant ("openvino bf16"), or None."""
    if variant not in RUNTIME_VARIANTS:
        return None
    backend, _, precision = variant.partition(" ")
    return backend, precision or "fp32"


def efficientps_variant_cfg(variant, device="cpu"):
    opts = [
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS),
        "MODEL.EFFICIENTPS.FUSION_SCORE_THRESH", "0.0",
    ]  # fmt: skip
    if variant == "plain":
        opts += ["MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN", "False"]
    if variant[-4:] in REDUCED:
        opts += ["MODEL.EFFICIENTPS.INFERENCE_DTYPE", REDUCED[variant[-4:]]]
    return efficientps_cfg(opts=opts, device=device)


def panoptic_fpn_model(device="cpu"):
    cfg = panoptic_fpn_r50_cfg(device=device)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = DETECTIONS
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    return build(cfg)


def build_variant(kind, variant, device="cpu"):
    """The model as ``variant`` runs it, with the seeded weights every variant shares."""
    if kind != "efficientps":
        return panoptic_fpn_model(device)
    cfg = efficientps_variant_cfg(variant, device)
    if variant == "plain":
        model = build(cfg)
        configure_inference(model, fold_norm=False, channels_last_devices=())
        return model
    # The user path: the weights come from a checkpoint file, loaded into a fresh model.
    with tempfile.TemporaryDirectory() as tmp:
        DetectionCheckpointer(build(cfg), save_dir=tmp).save("weights")
        torch.manual_seed(1)  # other initial weights: the file must replace them
        model = build_model(cfg)
        DetectionCheckpointer(model).load(os.path.join(tmp, "weights.pth"))
    model.eval()
    return model


def build_predict(kind, variant, height, width, device="cpu"):
    """A function of the benchmark's inputs returning (panoptic ids, semantic logits)."""
    if kind == "efficientps" and runtime_variant(variant):
        return runtime_predict(height, width, *runtime_variant(variant))
    model = build_variant(kind, variant, device)
    if kind == "efficientps" and variant == "torch.compile":
        fold_for_export(model)
        model.backbone = torch.compile(model.backbone)
        model.sem_seg_head = torch.compile(model.sem_seg_head)
    # Panoptic FPN has no inference dtype of its own: autocast around it.
    reduced = kind != "efficientps" and variant[-4:] in REDUCED
    dtype = getattr(torch, REDUCED.get(variant[-4:], "float32"))

    def predict(inputs):
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=reduced):
            output = model(inputs)[0]
        return output["panoptic_seg"][0], output["sem_seg"]

    return predict


def export_for_runtime(height, width, folder, int8=False):
    """The benchmark's EfficientPS (seeded weights) exported to ``folder`` with its input image
    (image.npy) for benchmarks/runtime_worker.py; the test size is the input's size. ``int8``:
    with its int8 graphs, calibrated on two other random images of that size."""
    import cv2

    from efficientps.export import export_metadata, export_onnx
    from efficientps_runtime.quantize import quantize_int8
    from efficientps_runtime.session import write_metadata

    cfg = efficientps_variant_cfg("user path")
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", str(min(height, width)),
                         "INPUT.MAX_SIZE_TEST", str(max(height, width))])  # fmt: skip
    model = build(cfg)
    image = make_inputs(height, width)[0]["image"].byte().permute(1, 2, 0).contiguous().numpy()
    export_onnx(model, image, os.path.join(folder, "model.onnx"))
    write_metadata(export_metadata(cfg, model), folder)
    np.save(os.path.join(folder, "image.npy"), image)
    if int8:
        calibration = []
        for seed in (1, 2):
            path = os.path.join(folder, f"calibration{seed}.png")
            rng = np.random.default_rng(seed)
            cv2.imwrite(path, rng.integers(0, 256, (height, width, 3), np.uint8))
            calibration.append(path)
        quantize_int8(folder, calibration)
    return folder


def runtime_predict(height, width, backend, precision="fp32"):
    from efficientps_runtime import Session

    folder = export_for_runtime(height, width, tempfile.mkdtemp(), int8=precision == "int8")
    session = Session(folder, backend=backend, precision=precision)
    order = session.metadata["input"]["channel_order"]

    def predict(inputs):
        hwc = inputs[0]["image"].byte().permute(1, 2, 0).contiguous().numpy()
        prediction = session.predict_full(hwc, channel_order=order)
        return torch.as_tensor(prediction.panoptic), torch.as_tensor(prediction.sem_logits)

    return predict


def make_inputs(height, width):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8).float()
    return [{"image": image, "height": height, "width": width}]


def timing_worker(kind, variant, height, width, runs, device="cpu"):
    """Latency and peak RSS of one variant alone in this process."""
    inputs = make_inputs(height, width)
    predict = build_predict(kind, variant, height, width, device)
    with torch.no_grad():
        seconds, times = median_seconds(lambda: predict(inputs), runs=runs, device=device)
    return {"seconds": seconds, "times": times, "peak_rss_mb": peak_memory_mb(device)}


def check_worker(kind, variant, height, width, device="cpu"):
    """Outputs of the variant against the plain model (its own process: memory not counted)."""
    inputs = make_inputs(height, width)
    with torch.no_grad():
        reference_ids, reference_sem = build_predict(kind, "plain", height, width, device)(inputs)
        ids, sem = build_predict(kind, variant, height, width, device)(inputs)
    same = matching_pixel_share(reference_ids.numpy(), ids.numpy())
    return {
        "same_panoptic": bool(same == 1.0),
        "sem_logit_diff": float((reference_sem - sem).abs().max()),
        "pixels": 1.0 - same,
    }


def run_child(kind, variant, size, runs, mode="time", device="cpu"):
    if runtime_variant(variant) and mode == "time":
        # Exported in one process, timed in another that never imports torch.
        backend, precision = runtime_variant(variant)
        with tempfile.TemporaryDirectory() as folder:
            int8 = ["--int8"] if precision == "int8" else []
            run_worker(__file__, ["--export", size, folder, *int8])
            runtime = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime_worker.py")
            return run_worker(
                runtime,
                [
                    "--model",
                    folder,
                    "--image",
                    os.path.join(folder, "image.npy"),
                    "--runs",
                    str(runs),
                    "--backend",
                    backend,
                    "--precision",
                    precision,
                ],
            )
    arguments = ["--worker", kind, variant, size, "--runs", str(runs), "--device", device]
    return run_worker(__file__, arguments + (["--check"] if mode == "check" else []))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1024x2048", "512x1024"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS + GPU_VARIANTS)
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "VARIANT", "SIZE"))
    parser.add_argument("--check", action="store_true", help="worker: compare with plain")
    parser.add_argument("--export", nargs=2, metavar=("SIZE", "DIR"), help="worker: export")
    parser.add_argument("--int8", action="store_true", help="--export: with int8 graphs")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (GPU: memory is CUDA's peak allocation)"
    )
    args = parser.parse_args(argv)
    if args.export:
        height, width = map(int, args.export[0].split("x"))
        folder = export_for_runtime(height, width, args.export[1], int8=args.int8)
        print(json.dumps({"folder": folder}))
        return
    if args.worker:
        kind, variant, size = args.worker
        height, width = map(int, size.split("x"))
        if args.check:
            print(json.dumps(check_worker(kind, variant, height, width, args.device)))
        else:
            print(json.dumps(timing_worker(kind, variant, height, width, args.runs, args.device)))
        return

    on_gpu = args.device.startswith("cuda")
    variants = args.variants or (GPU_VARIANTS if on_gpu else VARIANTS)
    print(f"End-to-end inference benchmark on: {machine_line(args.device)}")
    rows = []
    for size in args.sizes:
        baseline = run_child("panoptic_fpn", "plain", size, args.runs, device=args.device)
        results = [("Panoptic FPN R50", "fp32", baseline, None)]
        if "user path, fp16" in variants:
            fp16 = run_child("panoptic_fpn", "user path, fp16", size, args.runs, device=args.device)
            results.append(("Panoptic FPN R50", "fp16 autocast", fp16, None))
        for variant in variants:
            timing = run_child("efficientps", variant, size, args.runs, device=args.device)
            check = None
            if variant != "plain":
                check = run_child(
                    "efficientps", variant, size, args.runs, mode="check", device=args.device
                )
            name = variant.split(",")[0]
            if runtime_variant(variant):
                name = runtime_variant(variant)[0]
            results.append((f"EfficientPS-b5 {name}", precision_of(variant), timing, check))
        for name, precision, r, check in results:
            note = ""
            if check:
                panoptic = (
                    "identical"
                    if check["same_panoptic"]
                    else (f"{100 * check['pixels']:.3g}% of pixels differ")
                )
                note = f"panoptic {panoptic}, logits max |diff| {check['sem_logit_diff']:.1e}"
            rows.append(
                (size, name, precision, f"{r['seconds']:.2f}",
                 f"{r['seconds'] / baseline['seconds']:.2f}", f"{r['peak_rss_mb']:.0f}",
                 f"{r['peak_rss_mb'] / baseline['peak_rss_mb']:.2f}", note)
            )  # fmt: skip
    print_table(
        f"End-to-end inference on {args.device}, batch 1, median of {args.runs} after a warm-up",
        ("input", "model", "precision", "s/img", "x PFPN",
         "peak GPU MB" if on_gpu else "peak RSS MB", "x PFPN", "check vs plain"),  # fmt: skip
        rows,
    )


if __name__ == "__main__":
    main()
