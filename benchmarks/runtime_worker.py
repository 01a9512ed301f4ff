#!/usr/bin/env python
"""Latency and peak RSS of an exported model under efficientps_runtime, in a process without
torch (what a deployment runs): prints one JSON line for benchmarks/inference.py.

    python benchmarks/runtime_worker.py --model DIR --image image.npy [--runs 3] \
        [--backend openvino] [--precision bf16]
"""

import argparse
import json
import resource
import statistics
import time

import numpy as np

from efficientps_runtime import Session
from efficientps_runtime.session import BACKENDS, PRECISIONS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True, help=".npy uint8 (H, W, 3) in the model's order")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    args = parser.parse_args(argv)
    image = np.load(args.image)
    session = Session(args.model, backend=args.backend, precision=args.precision)
    order = session.metadata["input"]["channel_order"]
    session.predict(image, channel_order=order)  # warm-up
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        session.predict(image, channel_order=order)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": statistics.median(times), "times": times, "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
