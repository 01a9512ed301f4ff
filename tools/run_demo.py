#!/usr/bin/env python
"""`make demo`: the whole job on the embedded synthetic dataset, on the CPU, in one command.

    python tools/run_demo.py --output output/demo [KEY VALUE ...]

1. generates the synthetic street scenes under $DETECTRON2_DATASETS/synthetic (skipped if there),
2. trains configs/demo/efficientps_synthetic_cpu.yaml with train_net.py (resumes if interrupted),
3. evaluates PQ/SQ/RQ, mIoU and AP on the synthetic val split (train_net's final evaluation),
4. runs efficientps.demo on a few val images and writes the visualisations,
then prints where everything is.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "efficientps_synthetic_cpu.yaml")
DEMO_SIZE = (128, 256)
NUM_TRAIN, NUM_VAL = 300, 50


def ensure_synthetic(root, size=DEMO_SIZE, num_train=NUM_TRAIN, num_val=NUM_VAL):
    """Generate the dataset unless a complete one of the same size is already there."""
    from efficientps.data import synthetic

    for split, count in (("train", num_train), ("val", num_val)):
        json_path = os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json")
        if os.path.isfile(json_path):
            with open(json_path) as f:
                images = json.load(f)["images"]
            if len(images) == count and (images[0]["height"], images[0]["width"]) == size:
                print(f"synthetic {split}: {count} images already in {root}")
                continue
        synthetic.generate_split(root, split, count, seed=0, size=size)
    return root


def train_and_evaluate(output_dir, config=DEMO_CONFIG, extra_opts=()):
    """train_net.py in a child process (its log shows the ETA); returns the eval results."""
    command = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        config,
        "--resume",
        "OUTPUT_DIR",
        output_dir,
        *extra_opts,
    ]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    results_path = os.path.join(output_dir, "inference", "synthetic_panoptic_val", "results.json")
    with open(results_path) as f:
        return json.load(f)


def visualise(output_dir, dataset_root, config=DEMO_CONFIG, num_images=4):
    from efficientps import demo

    images = sorted(glob.glob(os.path.join(dataset_root, "leftImg8bit", "val", "*", "*.png")))
    weights = os.path.join(output_dir, "model_final.pth")
    vis_dir = os.path.join(output_dir, "visualisations")
    demo.main(
        [
            "--config-file",
            config,
            "--input",
            *images[:num_images],
            "--output",
            vis_dir,
            "--opts",
            "MODEL.WEIGHTS",
            weights,
        ]
    )
    return sorted(glob.glob(os.path.join(vis_dir, "*_vis.png")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="output/demo", help="training + evaluation folder")
    parser.add_argument(
        "--datasets-root",
        default=os.environ.get("DETECTRON2_DATASETS", os.path.join(REPO, "datasets")),
        help="where synthetic/ is written (default $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    output_dir = os.path.abspath(args.output)
    datasets_root = os.path.abspath(args.datasets_root)
    # detectron2 reads DETECTRON2_DATASETS when efficientps is imported (here and in the child).
    os.environ["DETECTRON2_DATASETS"] = datasets_root
    start = time.perf_counter()

    synthetic_root = ensure_synthetic(os.path.join(datasets_root, "synthetic"))
    results = train_and_evaluate(output_dir, extra_opts=args.opts)
    visualisations = visualise(output_dir, synthetic_root)
    from efficientps.demo import ground_truth_vs_prediction_sheet  # after DETECTRON2_DATASETS

    overview = os.path.join(output_dir, "visualisations", "overview.png")
    ground_truth_vs_prediction_sheet(visualisations, "synthetic_panoptic_val", overview)

    minutes = (time.perf_counter() - start) / 60
    panoptic = results.get("panoptic_seg", {})
    nan = float("nan")
    print(f"\n== EfficientPS demo done in {minutes:.1f} min ==")
    print(
        f"synthetic val: PQ {panoptic.get('PQ', nan):.1f}  PQ_th {panoptic.get('PQ_th', nan):.1f}"
        f"  PQ_st {panoptic.get('PQ_st', nan):.1f}"
        f"  mIoU {results.get('sem_seg', {}).get('mIoU', nan):.1f}"
        f"  AP {results.get('segm', {}).get('AP', nan):.1f}"
    )
    print(f"dataset:         {synthetic_root}")
    print(f"model + logs:    {output_dir} (model_final.pth, log.txt, metrics.json)")
    print(f"evaluation:      {os.path.join(output_dir, 'inference', 'synthetic_panoptic_val')}")
    print(f"look at:         {overview} (ground truth | prediction)")
    print(f"per image:       {os.path.dirname(overview)} (*_vis.png, *_panoptic.png/json)")
    return results


if __name__ == "__main__":
    main()
