"""detectron2 DatasetEvaluator for EfficientPS: PQ/SQ/RQ, semantic mIoU and instance AP.

Ground truth comes from each record's panoptic PNG and segments_info (category ids = semantic
channels), read once per image for all three metrics. Statistics are per-class sums gathered
from every process at the end, so multi-process evaluation gives the single-process numbers.
"""

import copy
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from efficientps_pq import PQAccumulator, format_table, read_panoptic_png, write_panoptic_png
from efficientps_pq.kernels import add_confusion, relabel

from ..channel_argmax import channel_argmax
from ..class_tables import PanopticClassTables, channel_to_dataset_id
from .rle import encode_mask

logger = logging.getLogger(__name__)


class EfficientPSEvaluator(DatasetEvaluator):
    """Panoptic quality, mIoU and AP of EfficientPS outputs on a registered panoptic dataset."""

    def __init__(
        self, dataset_name, *, class_tables=None, distributed=True, output_dir=None, compute_ap=True
    ):
        """
        Args:
            dataset_name: a registered panoptic dataset (its metadata and ground truth).
            class_tables: the model's PanopticClassTables (``build_evaluator`` passes the ones
                the model and the mapper were built with); None: from the dataset's metadata.
            distributed: gather the statistics of all processes before computing.
            output_dir: where the predictions and results.json go (None: nowhere).
            compute_ap: also the COCO mask AP of the thing predictions.
        """
        self.metadata = MetadataCatalog.get(dataset_name)
        self.tables = class_tables or PanopticClassTables.from_metadata(self.metadata)
        self.class_names = list(self.metadata.stuff_classes)
        self.ignore_label = self.metadata.ignore_label
        self.categories = [
            {"id": c, "name": self.class_names[c], "isthing": c in self.tables.thing_channels}
            for c in range(self.tables.num_classes)
        ]
        self.distributed = distributed
        self.output_dir = output_dir
        self.compute_ap = compute_ap
        self.thing_index = self.tables.thing_index_of_channel()
        self.reset()

    def reset(self):
        self.pq = PQAccumulator(self.categories)
        n = self.tables.num_classes
        self.confusion = np.zeros((n, n), np.int64)
        self.coco_gt, self.coco_dt = [], []
        self.predictions_json = []

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            image_name = record.get("file_name", record.get("image_id"))
            gt_ids = read_panoptic_png(record["pan_seg_file_name"])
            gt_segments = record["segments_info"]
            panoptic, pred_segments = output["panoptic_seg"]
            pred_ids = panoptic.cpu().numpy()
            self.pq.add(gt_ids, gt_segments, pred_ids, pred_segments, image_name)
            gt_sem = self._semantic_gt(gt_ids, gt_segments)
            if "sem_seg" in output:
                # The argmax where the logits are (a GPU): 4 bytes per pixel come to the host
                # instead of 4 per pixel and class (160 MB per Cityscapes image).
                pred_sem = channel_argmax(output["sem_seg"]).to(torch.int32).cpu().numpy()
                self._add_confusion(pred_sem, gt_sem, image_name)
            if self.compute_ap and "instances" in output:
                self._add_instances(record, gt_ids, gt_segments, output["instances"])
            if self.output_dir:
                self._save_prediction(record, pred_ids, pred_segments)

    def _semantic_gt(self, gt_ids, gt_segments):
        """Semantic channel of every pixel (crowd and void: the ignore label), int32."""
        channel = {s["id"]: s["category_id"] for s in gt_segments if not s.get("iscrowd", 0)}
        keys = np.asarray(sorted(channel), np.int64)
        values = np.asarray([channel[k] for k in keys], np.int32)
        semantic = np.empty(gt_ids.shape, np.int32)
        relabel(gt_ids.ravel(), keys, values, np.int32(self.ignore_label), semantic.ravel())
        return semantic

    def _add_confusion(self, pred, gt, image_name):
        outside = add_confusion(gt.ravel(), pred.ravel(), self.ignore_label, self.confusion)
        if outside:
            raise ValueError(
                f"{image_name}: {outside} pixels have a semantic class outside "
                f"0..{self.tables.num_classes - 1} (ground truth or prediction)"
            )

    def _add_instances(self, record, gt_ids, gt_segments, instances):
        image_id = len(self.coco_gt) + comm.get_rank() * 10**7  # unique across processes
        gt_entries = []
        for s in gt_segments:
            if s["category_id"] not in self.thing_index:
                continue
            rle = encode_mask(gt_ids == s["id"])
            area = float(mask_util.area(rle))
            if area == 0:
                continue
            gt_entries.append(
                {
                    "segmentation": rle,
                    "area": area,
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "iscrowd": int(s.get("iscrowd", 0)),
                    "category_id": self.thing_index[s["category_id"]],
                }
            )
        instances = instances.to("cpu")
        dt_entries = []
        if instances.has("pred_masks") and len(instances):
            masks = instances.pred_masks.numpy()
            for mask, score, cls in zip(masks, instances.scores.tolist(), instances.pred_classes):
                rle = encode_mask(mask)
                dt_entries.append({"segmentation": rle, "score": score, "category_id": int(cls)})
        self.coco_gt.append((image_id, gt_ids.shape, gt_entries))
        self.coco_dt.append((image_id, dt_entries))

    def _save_prediction(self, record, pred_ids, pred_segments):
        os.makedirs(os.path.join(self.output_dir, "panoptic"), exist_ok=True)
        name = os.path.splitext(os.path.basename(record["file_name"]))[0] + "_panoptic.png"
        write_panoptic_png(os.path.join(self.output_dir, "panoptic", name), pred_ids)
        self.predictions_json.append(
            {
                "image_id": record["image_id"],
                "file_name": name,
                "segments_info": [
                    {"id": s["id"], "category_id": s["category_id"], "iscrowd": 0}
                    for s in pred_segments
                ],
            }
        )

    def evaluate(self):
        state = [self.pq.state(), self.confusion, self.coco_gt, self.coco_dt, self.predictions_json]
        if self.distributed:
            comm.synchronize()
            gathered = comm.gather(state, dst=0)
            if not comm.is_main_process():
                return {}
        else:
            gathered = [state]
        pq = PQAccumulator(self.categories)
        for pq_state, *_ in gathered:
            pq.add_state(pq_state)
        confusion = sum(g[1] for g in gathered)
        coco_gt = list(itertools.chain.from_iterable(g[2] for g in gathered))
        coco_dt = list(itertools.chain.from_iterable(g[3] for g in gathered))
        predictions = list(itertools.chain.from_iterable(g[4] for g in gathered))

        results = OrderedDict()
        pq_results = pq.results()
        logger.info("Panoptic quality:\n" + format_table(pq_results, self.categories))
        panoptic = {}
        for key, name in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                panoptic[metric.upper() + name] = 100 * pq_results[key][metric]
        results["panoptic_seg"] = panoptic
        results["sem_seg"] = self._semantic_results(confusion)
        if self.compute_ap and coco_gt:
            results["segm"] = self._ap_results(coco_gt, coco_dt)
        if self.output_dir and predictions:
            self._write_predictions_json(predictions)
            with open(os.path.join(self.output_dir, "pq_results.json"), "w") as f:
                json.dump(pq_results, f, indent=2)
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
        return results

    def _semantic_results(self, confusion):
        tp = np.diag(confusion).astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - tp
        present = union > 0
        iou = np.where(present, tp / np.maximum(union, 1), np.nan)
        results = {"mIoU": 100 * float(np.nanmean(iou)) if present.any() else 0.0}
        total = confusion.sum()
        results["pACC"] = 100 * float(tp.sum() / total) if total else 0.0
        for name, value in zip(self.class_names, iou):
            results[f"IoU-{name}"] = 100 * float(value) if not np.isnan(value) else float("nan")
        return results

    def _ap_results(self, coco_gt, coco_dt):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        images, annotations, detections = [], [], []
        for image_id, (height, width), entries in coco_gt:
            images.append({"id": image_id, "height": height, "width": width})
            for entry in entries:
                annotations.append(dict(entry, id=len(annotations) + 1, image_id=image_id))
        for image_id, entries in coco_dt:
            detections += [dict(e, image_id=image_id) for e in entries]
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": j} for j in range(self.tables.num_things)],
        }
        gt.createIndex()
        if not detections:
            return {"AP": 0.0, "AP50": 0.0}
        evaluation = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        return {"AP": 100 * float(evaluation.stats[0]), "AP50": 100 * float(evaluation.stats[1])}

    def _write_predictions_json(self, predictions):
        """COCO-panoptic predictions in the dataset's own category ids (offline evaluation)."""
        to_dataset_id = channel_to_dataset_id(self.metadata)
        for annotation in predictions:
            for s in annotation["segments_info"]:
                s["category_id"] = to_dataset_id[s["category_id"]]
        with open(os.path.join(self.output_dir, "predictions.json"), "w") as f:
            json.dump({"annotations": predictions}, f)
