#!/usr/bin/env python
"""Learning benchmark: what the demo config learns on a held-out Cityscapes-format set.

    python benchmarks/learning.py [--seeds 1 2 3] [--iters 500] [--variant NAME KEY VALUE ...]
                                  [--checkout DIR] [--output output/learning]

The set (benchmarks/cityscapes_scenes.py: 120 train / 30 val street scenes at 128x256, the 19
Cityscapes classes, crowd groups, void regions) is made by cityscapesscripts' own tools from
polygon files and prepared by datasets/prepare_cityscapes.py, as a user's Cityscapes tree is.
Each run is ``train_net.py --config-file configs/demo/efficientps_synthetic_cpu.yaml`` on it
(batch 4, the demo's schedule stretched to --iters, decays at 75% and 90%), then the final
evaluation of train_net.py (our evaluator: PQ, mIoU, mask AP on the val split).

``--variant NAME KEY VALUE ...`` (repeatable) adds a row trained with those config overrides;
the plain demo config is always the first row. ``--checkout DIR`` runs another checkout's
train_net.py and package instead (e.g. a ``git worktree`` of an older commit), for bisecting.
Finished runs are kept under --output and not redone. About 10 minutes per run on 2 cores.
Prints one table: median and range over the seeds of PQ, PQ_th, PQ_st, mIoU and AP.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from cityscapes_scenes import make_cityscapes_set
from common import REPO, machine_line, print_table

DEMO_CONFIG = os.path.join("configs", "demo", "efficientps_synthetic_cpu.yaml")
METRICS = (
    ("PQ", "panoptic_seg", "PQ"),
    ("PQ_th", "panoptic_seg", "PQ_th"),
    ("PQ_st", "panoptic_seg", "PQ_st"),
    ("mIoU", "sem_seg", "mIoU"),
    ("AP", "segm", "AP"),
)


def dataset_opts(iters):
    """The demo config pointed at detectron2's Cityscapes registration, schedule of ``iters``."""
    return [
        "DATASETS.TRAIN", '("cityscapes_fine_panoptic_train",)',
        "DATASETS.TEST", '("cityscapes_fine_panoptic_val",)',
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19",
        "MODEL.ROI_HEADS.NUM_CLASSES", "8",
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({int(iters * 0.75)}, {int(iters * 0.9)})",
        "SOLVER.CHECKPOINT_PERIOD", str(iters),
    ]  # fmt: skip


def train_and_evaluate(run_dir, datasets_root, opts, seed, iters, checkout=REPO):
    """One training + final evaluation; returns {metric: value} (cached in run_dir)."""
    results_path = os.path.join(
        run_dir, "inference", "cityscapes_fine_panoptic_val", "results.json"
    )
    if not os.path.isfile(results_path):
        env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, PYTHONPATH=checkout)
        command = [
            sys.executable, os.path.join(checkout, "train_net.py"),
            "--config-file", os.path.join(checkout, DEMO_CONFIG), "--resume",
            *dataset_opts(iters), "SEED", str(seed), "OUTPUT_DIR", run_dir, *opts,
        ]  # fmt: skip
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "stdout.txt"), "w") as log:
            subprocess.run(command, check=True, cwd=checkout, env=env, stdout=log, stderr=log)
    with open(results_path) as f:
        results = json.load(f)
    return {name: results[group][key] for name, group, key in METRICS}


def summary(values):
    median = statistics.median(values)
    return f"{median:.1f} ({min(values):.1f}-{max(values):.1f})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "learning"))
    parser.add_argument("--checkout", default=REPO, help="the checkout whose code is trained")
    parser.add_argument("--label", default="demo config", help="name of the first row")
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar="NAME KEY VALUE",
        help="a further row: NAME then config overrides",
    )  # fmt: skip
    parser.add_argument("--skip-plain", action="store_true", help="only the --variant rows")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    output = os.path.abspath(args.output)
    datasets_root = os.path.join(output, "datasets")
    make_cityscapes_set(os.path.join(datasets_root, "cityscapes"))
    rows = [] if args.skip_plain else [(args.label, [])]
    rows += [(v[0], v[1:]) for v in args.variant]
    checkout = os.path.abspath(args.checkout)
    tag = "" if checkout == REPO else os.path.basename(checkout) + "-"
    table = []
    for name, opts in rows:
        runs = []
        for seed in args.seeds:
            run_name = tag + name.replace(" ", "_").replace("/", "_") + f"-seed{seed}"
            start = time.perf_counter()
            metrics = train_and_evaluate(
                os.path.join(output, "runs", run_name), datasets_root, opts, seed, args.iters,
                checkout=checkout,
            )  # fmt: skip
            runs.append(metrics)
            print(
                f"{run_name}: " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items())
                + f"  ({(time.perf_counter() - start) / 60:.1f} min)",
                flush=True,
            )  # fmt: skip
        table.append([name] + [summary([r[m] for r in runs]) for m, _, _ in METRICS])
    print_table(
        f"Learning benchmark: demo config, {args.iters} iterations at batch 4, seeds "
        f"{args.seeds}, 120 train / 30 val Cityscapes-format scenes at 128x256; median (range). "
        f"{machine_line()}",
        ["run"] + [m for m, _, _ in METRICS],
        table,
    )


if __name__ == "__main__":
    main()
