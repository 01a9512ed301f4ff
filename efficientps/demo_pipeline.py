"""`make demo`: the whole job on the embedded synthetic dataset, on the CPU, in one command.

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
    from .data import synthetic

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
    from . import demo

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


def overview_sheet(output_dir, vis_paths, scale=2, dataset_name="synthetic_panoptic_val"):
    """One PNG to look at: per row the ground truth and the prediction of a val image."""
    import cv2
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .demo import visualize_panoptic
    from .evaluation import read_panoptic_png

    metadata = MetadataCatalog.get(dataset_name)
    records = {os.path.basename(r["file_name"]): r for r in DatasetCatalog.get(metadata.name)}
    rows = []
    for vis_path in vis_paths:
        record = records[os.path.basename(vis_path).replace("_vis.png", ".png")]
        image = cv2.imread(record["file_name"])[:, :, ::-1]
        ids = read_panoptic_png(record["pan_seg_file_name"])
        segments = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in record["segments_info"]
        ]
        truth = visualize_panoptic(image, ids, segments, metadata)
        prediction = cv2.imread(vis_path)[:, :, ::-1]
        rows.append(np.concatenate([truth, np.full((truth.shape[0], 4, 3), 255), prediction], 1))
    sheet = np.concatenate(
        [np.pad(r, ((0, 4), (0, 0), (0, 0)), constant_values=255) for r in rows], 0
    ).astype(np.uint8)
    sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    header = np.full((28, sheet.shape[1], 3), 255, np.uint8)
    for text, x in (("ground truth", 8), ("EfficientPS prediction", sheet.shape[1] // 2 + 8)):
        cv2.putText(header, text, (x, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    path = os.path.join(output_dir, "visualisations", "overview.png")
    cv2.imwrite(path, np.concatenate([header, sheet], 0)[:, :, ::-1])
    return path


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
    overview = overview_sheet(output_dir, visualisations)

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
