#!/usr/bin/env python
"""Where the exported graph spends its time: OpenVINO's per-layer counters, grouped by module.

    python benchmarks/runtime_profile.py [--size 512x1024] [--runs 3] [--precision fp32]

Exports the end-to-end benchmark's EfficientPS-b5 (benchmarks/inference.py: Cityscapes config,
random weights, 50 detections forced, test size = the input) in a child process, compiles it
with OpenVINO's CPU plugin as the runtime does (latency hint, the given precision) with
performance counters on, and prints the median over --runs inferences of each module's time
(the layer names' first two levels: /backbone/bottom_up, /proposal_generator/rpn_head, ...) and
of each layer type, with its share of the graph.
"""

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))


def module_of(name, depth=2):
    parts = [p for p in name.split("/") if p]
    return "/" + "/".join(parts[:depth]) if len(parts) > depth else "(graph-level)"


def profile(folder, runs, precision):
    import openvino

    sys.path.insert(0, os.path.dirname(BENCHMARKS))
    from efficientps_runtime.session import OPENVINO_PRECISION_HINTS

    image = np.load(os.path.join(folder, "image.npy"))
    core = openvino.Core()
    config = {
        "PERF_COUNT": True,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINTS[precision],
    }
    graph = core.read_model(os.path.join(folder, "model.onnx"))
    compiled = core.compile_model(graph, "CPU", config)
    request = compiled.create_infer_request()
    request.infer([image])  # warm-up
    modules, kinds = collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(runs):
        request.infer([image])
        per_module, per_kind = collections.Counter(), collections.Counter()
        for layer in request.get_profiling_info():
            ms = layer.real_time.total_seconds() * 1000
            per_module[module_of(layer.node_name)] += ms
            per_kind[layer.node_type] += ms
        for key, value in per_module.items():
            modules[key].append(value)
        for key, value in per_kind.items():
            kinds[key].append(value)
    return (
        {k: statistics.median(v) for k, v in modules.items()},
        {k: statistics.median(v) for k, v in kinds.items()},
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    sys.path.insert(0, BENCHMARKS)
    from common import machine_line, print_table, run_worker

    with tempfile.TemporaryDirectory() as folder:
        run_worker(os.path.join(BENCHMARKS, "inference.py"), ["--export", args.size, folder])
        modules, kinds = profile(folder, args.runs, args.precision)
    total = sum(modules.values())
    print(f"OpenVINO {args.precision} graph time at {args.size}: {total:.0f} ms "
          f"(sum of layer times, median of {args.runs}); {machine_line()}")  # fmt: skip
    for title, table in (("module", modules), ("layer type", kinds)):
        rows = [
            (name, f"{ms:.1f}", f"{100 * ms / total:.1f}")
            for name, ms in sorted(table.items(), key=lambda item: -item[1])[: args.top]
        ]
        print_table(f"EfficientPS-b5 graph by {title}", (title, "ms", "% of graph"), rows)
    print(json.dumps({"total_ms": total}))


if __name__ == "__main__":
    main()
