"""Panoptic segmentation of images with an exported EfficientPS, without torch or detectron2.

python -m efficientps_runtime --model DIR --input 'images/*.png' [more ...] --output OUT
"""

import argparse
import os
import sys
import time

import cv2

from .inputs import expand_inputs
from .outputs import write_prediction
from .session import BACKENDS, PRECISIONS, Session


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder with model.onnx + metadata.json")
    parser.add_argument("--input", nargs="+", required=True, help="files, globs, folders")
    parser.add_argument("--output", required=True, help="folder for the outputs")
    parser.add_argument("--threads", type=int, default=None, help="inference threads")
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32 on every CPU (default); bf16: OpenVINO on CPUs with AVX512-BF16 or AMX",
    )
    args = parser.parse_args(argv)
    paths = expand_inputs(args.input)
    session = Session(
        args.model, backend=args.backend, threads=args.threads, precision=args.precision
    )
    os.makedirs(args.output, exist_ok=True)
    classes = {c["dataset_id"]: c for c in session.metadata["classes"]}
    start = time.perf_counter()
    for done, path in enumerate(paths, 1):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}: expected a file OpenCV can decode")
        panoptic, segments = session.predict(image, channel_order="BGR")
        prefix = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        write_prediction(prefix, image, panoptic, segments, classes)
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (len(paths) - done)
        print(
            f"\r[{done}/{len(paths)}] {os.path.basename(path)}  {elapsed:.1f} s, ETA {eta:.1f} s",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
    print(f"wrote {len(paths)} panoptic predictions to {args.output}")
    return paths


if __name__ == "__main__":
    main()
