"""Panoptic segmentation of images with an exported EfficientPS, without torch or detectron2.

python -m efficientps_runtime --model DIR --input 'images/*.png' [more ...] --output OUT
"""

import argparse
import os
import sys
import time

from .inputs import UnreadableInputError, expand_inputs, read_image
from .outputs import write_prediction
from .session import (
    BACKENDS,
    PRECISIONS,
    GraphOutputError,
    InputImageError,
    ModelFolderError,
    PrecisionError,
    Session,
)


def main(argv=None):
    """Runs the CLI; returns its exit status: 0 when every image was written, 1 when some
    could not be read or predicted (each reported on one line), 2 for a bad model or input
    list (one line, no traceback)."""
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
        help="fp32 on every CPU (default); bf16: OpenVINO on CPUs with AVX512-BF16 or AMX; "
        "int8: the folder's int8 graph (tools/export_model.py --quantize int8)",
    )
    args = parser.parse_args(argv)
    try:
        paths = expand_inputs(args.input)
        session = Session(
            args.model, backend=args.backend, threads=args.threads, precision=args.precision
        )
        os.makedirs(args.output, exist_ok=True)
    except (FileNotFoundError, ModelFolderError, PrecisionError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = {c["dataset_id"]: c for c in session.metadata["classes"]}
    failed = []
    start = time.perf_counter()
    for done, path in enumerate(paths, 1):
        try:
            image = read_image(path)
            panoptic, segments = session.predict(image, channel_order="BGR")
        except (UnreadableInputError, InputImageError, GraphOutputError) as error:
            print(f"\nerror: {error}", file=sys.stderr)
            failed.append(path)
            continue
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
    written = len(paths) - len(failed)
    print(f"wrote {written} panoptic predictions to {args.output}")
    if failed:
        print(f"error: {len(failed)} of {len(paths)} inputs failed: {', '.join(failed)}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
