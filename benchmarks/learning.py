#!/usr/bin/env python
"""Learning benchmark: what the demo config learns on a held-out Cityscapes-format set.

    python benchmarks/learning.py [--seeds 1 2 3] [--iters 500] [--variant NAME KEY VALUE ...]
                                  [--checkout DIR] [--output output/learning]
    python benchmarks/learning.py --fusion-table [--seeds 1 2 3]

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

``--fusion-table`` prints issue 32's table instead: EfficientPS-B0 with the paper's fusion and
with the learned fusion (MODEL.EFFICIENTPS.FUSION learned), and detectron2's own Panoptic FPN
R50 (benchmarks/configs/panoptic_fpn_R_50_demo.yaml, trained from scratch on the same data,
crops, batch and schedule), with seconds per iteration and parameters. The learned fusion's
quality learns from detached inputs outside the gradient clip, so its network trains exactly
as the paper fusion's: the paper row evaluates the learned run's weights with the paper's rule
(an --eval-only run, not a second training; tests/test_efficientps_model.py checks that the
network's weights are those of a paper-fusion training to the bit).
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


def train_and_evaluate(
    run_dir, datasets_root, opts, seed, iters, checkout=REPO, config=DEMO_CONFIG,
    script="train_net.py", weights=None,
):  # fmt: skip
    """One training + final evaluation (or, with ``weights``, only the evaluation of those);
    returns {metric: value} (cached in run_dir)."""
    results_path = os.path.join(
        run_dir, "inference", "cityscapes_fine_panoptic_val", "results.json"
    )
    if not os.path.isfile(results_path):
        env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, PYTHONPATH=checkout)
        mode = ["--resume"] if weights is None else ["--eval-only", "MODEL.WEIGHTS", weights]
        command = [
            sys.executable, os.path.join(checkout, script),
            "--config-file", os.path.join(checkout, config), *mode[:1],
            *dataset_opts(iters), "SEED", str(seed), "OUTPUT_DIR", run_dir, *mode[1:], *opts,
        ]  # fmt: skip
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "stdout.txt"), "w") as log:
            subprocess.run(command, check=True, cwd=checkout, env=env, stdout=log, stderr=log)
    with open(results_path) as f:
        results = json.load(f)
    return {name: results[group][key] for name, group, key in METRICS}


PEER_CONFIG = os.path.join("benchmarks", "configs", "panoptic_fpn_R_50_demo.yaml")
PEER_SCRIPT = os.path.join("benchmarks", "train_peer.py")
LEARNED = ["MODEL.EFFICIENTPS.FUSION", "learned"]
PEER_OPTS = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "12"]
# detectron2's Panoptic FPN learning rate, 0.02 at batch 16, scaled linearly to batch 4.
PEER_SCALED_LR = [*PEER_OPTS, "SOLVER.BASE_LR", "0.005"]


TIMING_ITERS = 60


def seconds_per_iteration(run_dir, datasets_root, opts, config=DEMO_CONFIG, script="train_net.py"):
    """Seconds per training iteration of a config, from a run of TIMING_ITERS iterations of its
    own (cached): the median of detectron2's logged "time" after the first logging window.
    The seeds' runs share the machine with each other; this one runs alone."""
    metrics = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics):
        timing = ["SOLVER.MAX_ITER", str(TIMING_ITERS), "SOLVER.STEPS", "()",
                  "SOLVER.CHECKPOINT_PERIOD", "100000"]  # fmt: skip
        train_and_evaluate(run_dir, datasets_root, [*opts, *timing], 1, TIMING_ITERS,
                           config=config, script=script)  # fmt: skip
    with open(metrics) as f:
        times = [r["time"] for r in map(json.loads, f) if "time" in r]
    return statistics.median(times[1:] or times)


def parameter_count(run_dir):
    """Trainable tensors of a run's final weights (BatchNorm statistics are not parameters)."""
    from efficientps.engine.weight_files import read_weight_file

    buffers = ("running_mean", "running_var", "num_batches_tracked")
    state = read_weight_file(os.path.join(run_dir, "model_final.pth"))["model"]
    return sum(v.numel() for k, v in state.items() if not k.endswith(buffers))


def fusion_table(args, output, datasets_root):
    """EfficientPS-B0 paper fusion / learned fusion / Panoptic FPN R50 over the seeds."""
    runs = os.path.join(output, "runs")
    peer_seeds = args.seeds if args.peer_seeds is None else args.peer_seeds
    # Panoptic FPN rows: name, config overrides, run-folder prefix, seeds.
    peer_rows = (
        ("Panoptic FPN R50 (detectron2)", PEER_OPTS, "panoptic_fpn_R50", peer_seeds),
        ("Panoptic FPN R50, lr 0.005", PEER_SCALED_LR, "panoptic_fpn_R50_lr0.005",
         args.scaled_lr_seeds),
    )  # fmt: skip
    # Per row: config overrides, config, script and folder of its timing run.
    setups = {
        "EfficientPS-B0, paper fusion": ([], DEMO_CONFIG, "train_net.py", "demo_config"),
        "EfficientPS-B0, learned fusion": (LEARNED, DEMO_CONFIG, "train_net.py", "learned"),
        **{
            name: (opts, PEER_CONFIG, PEER_SCRIPT, "panoptic_fpn") for name, opts, _, _ in peer_rows
        },
    }
    rows = {name: [] for name in setups}
    parameters = {}
    all_seeds = set(args.seeds).union(*(seeds for *_, seeds in peer_rows))
    for seed in sorted(all_seeds):
        results = []  # (row, metrics, run)
        if seed in args.seeds:
            learned_dir = os.path.join(runs, f"learned_fusion-seed{seed}")
            learned = train_and_evaluate(learned_dir, datasets_root, LEARNED, seed, args.iters)
            paper = train_and_evaluate(
                os.path.join(runs, f"paper_fusion_of_learned-seed{seed}"), datasets_root, [],
                seed, args.iters, weights=os.path.join(learned_dir, "model_final.pth"),
            )  # fmt: skip
            results += [("EfficientPS-B0, paper fusion", paper, learned_dir),
                        ("EfficientPS-B0, learned fusion", learned, learned_dir)]  # fmt: skip
        for name, opts, prefix, seeds in peer_rows:
            if seed in seeds:
                run_dir = os.path.join(runs, f"{prefix}-seed{seed}")
                metrics = train_and_evaluate(run_dir, datasets_root, opts, seed, args.iters,
                                             config=PEER_CONFIG, script=PEER_SCRIPT)  # fmt: skip
                results.append((name, metrics, run_dir))
        for name, metrics, run in results:
            rows[name].append(metrics)
            parameters[name] = parameter_count(run)
            print(f"{name}, seed {seed}: " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items()),
                  flush=True)  # fmt: skip
    table = []
    for name, runs_of_row in rows.items():
        if not runs_of_row:
            continue
        opts, config, script, tag = setups[name]
        timing_dir = os.path.join(output, "timing", tag)
        seconds = seconds_per_iteration(timing_dir, datasets_root, opts, config, script)
        table.append([name] + [summary([r[m] for r in runs_of_row]) for m, _, _ in METRICS]
                     + [f"{seconds:.2f}", f"{parameters[name] / 1e6:.2f} M"])  # fmt: skip
    print_table(
        f"Learning benchmark, fusions and peer: {args.iters} iterations at batch 4, seeds "
        f"{args.seeds} (Panoptic FPN {peer_seeds}), 120 train / 30 val Cityscapes-format "
        f"scenes at 128x256; median (range); "
        f"s/it: a {TIMING_ITERS}-iteration run of each alone. {machine_line()}",
        ["run"] + [m for m, _, _ in METRICS] + ["s/it", "parameters"],
        table,
    )


def summary(values):
    median = statistics.median(values)
    return f"{median:.1f} ({min(values):.1f}-{max(values):.1f})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument(
        "--peer-seeds", type=int, nargs="+", help="Panoptic FPN's (default --seeds)"
    )
    parser.add_argument(
        "--scaled-lr-seeds", type=int, nargs="*", default=[],
        help="also Panoptic FPN at detectron2's lr scaled to batch 4 (0.005), these seeds",
    )  # fmt: skip
    parser.add_argument("--output", default=os.path.join(REPO, "output", "learning"))
    parser.add_argument("--checkout", default=REPO, help="the checkout whose code is trained")
    parser.add_argument("--label", default="demo config", help="name of the first row")
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar="NAME KEY VALUE",
        help="a further row: NAME then config overrides",
    )  # fmt: skip
    parser.add_argument("--skip-plain", action="store_true", help="only the --variant rows")
    parser.add_argument(
        "--fusion-table", action="store_true",
        help="paper fusion, learned fusion and detectron2's Panoptic FPN R50 instead",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    output = os.path.abspath(args.output)
    datasets_root = os.path.join(output, "datasets")
    make_cityscapes_set(os.path.join(datasets_root, "cityscapes"))
    if args.fusion_table:
        return fusion_table(args, output, datasets_root)
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
