"""Run a trained EfficientPS on images or a video; write panoptic PNG + JSON + visualisation.

    python -m efficientps.demo --config-file configs/demo/efficientps_synthetic_cpu.yaml \\
        --input 'images/*.png' --output out/ --opts MODEL.WEIGHTS output/demo/model_final.pth

Per input image ``NAME`` the output folder gets ``NAME_panoptic.png`` (COCO-panoptic RGB
encoding, id = R + 256 G + 256^2 B), ``NAME_panoptic.json`` (segments with the dataset's
category ids) and ``NAME_vis.png`` (detectron2's Visualizer with the dataset's names and colours);
with ``--semantic`` also ``NAME_semantic.png`` (the semantic class per pixel in the dataset's
category ids) and with ``--instances`` ``NAME_instances.png`` (16-bit thing-instance ids).
A video gives one set of files per frame, ``NAME_000123_*``.
"""

import argparse
import json
import os

import cv2
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from efficientps_runtime.inputs import (
    IMAGE_EXTENSIONS,
    UnreadableInputError,
    expand_inputs,
    read_image,
)
from efficientps_runtime.session import checked_resized_shape

from .channel_argmax import channel_argmax
from .class_tables import PanopticClassTables, channel_to_dataset_id
from .config import add_efficientps_config
from .engine.checkpoint import AtomicCheckpointer, check_weights_fit, read_checkpoint
from .evaluation import read_panoptic_png, write_panoptic_png

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def setup_cfg(config_file, opts=()):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


class PanopticPredictor(DefaultPredictor):
    """detectron2's DefaultPredictor (build, eval, load, resize, BGR/RGB, no_grad) for
    EfficientPS: the weights file is checked before it is loaded, and the metadata falls back
    to the first training dataset when the config lists no test set."""

    def __init__(self, cfg):
        weights = read_checkpoint(cfg.MODEL.WEIGHTS)  # a clear error for a missing/wrong file
        # DefaultPredictor would load MODEL.WEIGHTS with detectron2's checkpointer, which
        # unpickles .pkl files; it builds the model without them and ours loads the file.
        without_weights = cfg.clone()
        without_weights.defrost()
        without_weights.MODEL.WEIGHTS = ""
        super().__init__(without_weights)
        self.cfg = cfg.clone()
        check_weights_fit(self.model, weights, cfg.MODEL.WEIGHTS)
        AtomicCheckpointer(self.model).load(cfg.MODEL.WEIGHTS, checkpointables=[])
        self.metadata = MetadataCatalog.get((cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0])

    def __call__(self, original_image):
        """DefaultPredictor's call, after refusing an image that its resize would make empty
        (InputImageError, as the exported runtime does), instead of Pillow's error."""
        height, width = original_image.shape[:2]
        checked_resized_shape(
            height, width, self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST
        )
        return super().__call__(original_image)


def iter_frames(path):
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise UnreadableInputError(f"cannot open video {path}")
    index = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        yield index, frame
        index += 1
    video.release()


def save_outputs(output, image_bgr, metadata, out_prefix, semantic=False, instances=False):
    """Write the files of one image; returns the visualisation (RGB uint8).

    ``semantic``: also ``_semantic.png``, the semantic head's class of every pixel in the
    dataset's category ids (Cityscapes: label ids, as its semantic benchmark wants); 8-bit, or
    16-bit when an id exceeds 255. ``instances``: also ``_instances.png`` (16-bit), each thing
    instance's pixels set to its segment id in ``_panoptic.json``, 0 elsewhere.
    """
    panoptic, segments = output["panoptic_seg"]
    panoptic = panoptic.cpu()
    write_panoptic_png(out_prefix + "_panoptic.png", panoptic.numpy())
    to_dataset_id = channel_to_dataset_id(metadata)
    record = [
        {
            "id": int(s["id"]),
            "category_id": int(to_dataset_id[s["category_id"]]),
            "category_name": metadata.stuff_classes[s["category_id"]],
            "isthing": bool(s["isthing"]),
            "area": int(s.get("area", int((panoptic == s["id"]).sum()))),
            **({"score": float(s["score"])} if "score" in s else {}),
        }
        for s in segments
    ]
    with open(out_prefix + "_panoptic.json", "w") as f:
        json.dump({"segments_info": record}, f, indent=1)
    if semantic:
        write_semantic_png(out_prefix + "_semantic.png", output["sem_seg"], to_dataset_id)
    if instances:
        things = [s["id"] for s in segments if s["isthing"]]
        ids = panoptic.numpy()
        instance_ids = np.where(np.isin(ids, things), ids, 0).astype(np.uint16)
        cv2.imwrite(out_prefix + "_instances.png", instance_ids)
    vis = visualize_panoptic(image_bgr[:, :, ::-1], panoptic, segments, metadata)
    cv2.imwrite(out_prefix + "_vis.png", vis[:, :, ::-1])
    return vis


def visualize_panoptic(image_rgb, panoptic, segments, metadata):
    """detectron2's Visualizer: it looks thing ids up in thing_classes, stuff in stuff_classes.

    ``panoptic``: (H, W) segment ids, a tensor or array of any integer type.
    """
    tables = PanopticClassTables.from_metadata(metadata)
    # Our registrations (like detectron2's Cityscapes one) list every class in thing_classes;
    # a metadata listing only the things needs the thing index instead of the channel.
    lists_all = len(metadata.thing_classes) == tables.num_classes
    thing_index = tables.thing_index_of_channel()
    info = []
    for s in segments:
        entry = {"id": s["id"], "isthing": bool(s["isthing"]), "category_id": s["category_id"]}
        if s["isthing"] and not lists_all:
            entry["category_id"] = thing_index[s["category_id"]]
        if "score" in s:
            entry["score"] = s["score"]
        info.append(entry)
    # The Visualizer sorts ids with torch.unique, which has no kernel for the uint32 ids that
    # read_panoptic_png returns.
    panoptic = torch.as_tensor(np.asarray(panoptic).astype(np.int64))
    visualizer = Visualizer(image_rgb, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_panoptic_seg(panoptic, info, alpha=0.5).get_image()


def write_semantic_png(path, sem_logits, to_dataset_id):
    """The per-pixel argmax of (C, H, W) logits as the dataset's category ids."""
    channels = channel_argmax(sem_logits.cpu()).numpy()
    lookup = np.array([to_dataset_id[c] for c in range(sem_logits.shape[0])])
    dtype = np.uint8 if lookup.max() <= 255 else np.uint16
    cv2.imwrite(path, lookup[channels].astype(dtype))


def run(predictor, paths, output_dir, semantic=False, instances=False):
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in tqdm(paths, desc="panoptic demo", unit="input"):
        stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS:
            for index, frame in iter_frames(path):
                prefix = os.path.join(output_dir, f"{stem}_{index:06d}")
                save_outputs(
                    predictor(frame), frame, predictor.metadata, prefix, semantic, instances
                )
                written.append(prefix)
            continue
        image = read_image(path)
        prefix = os.path.join(output_dir, stem)
        save_outputs(predictor(image), image, predictor.metadata, prefix, semantic, instances)
        written.append(prefix)
    return written


def ground_truth_vs_prediction_sheet(vis_paths, dataset_name, path, scale=2):
    """One PNG to look at, written to ``path``: per row, the ground truth of an image of
    ``dataset_name`` and its prediction (the ``*_vis.png`` that ``main`` wrote for it)."""
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
    cv2.imwrite(path, np.concatenate([header, sheet], 0)[:, :, ::-1])
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="files, globs, folders, videos")
    parser.add_argument("--output", required=True, help="folder for the outputs")
    parser.add_argument(
        "--semantic",
        action="store_true",
        help="also NAME_semantic.png: the semantic class per pixel, in the dataset's ids",
    )
    parser.add_argument(
        "--instances",
        action="store_true",
        help="also NAME_instances.png: thing instances as their segment ids (16 bit)",
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE pairs")
    args = parser.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    paths = expand_inputs(args.input, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS, "image, video")
    predictor = PanopticPredictor(cfg)
    written = run(predictor, paths, args.output, args.semantic, args.instances)
    print(f"wrote {len(written)} panoptic predictions to {args.output}")
    return written


if __name__ == "__main__":
    main()
