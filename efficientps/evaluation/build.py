"""Pick the evaluator for a dataset from its metadata's evaluator_type (used by train_net.py)."""

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from ..class_tables import PanopticClassTables
from .panoptic_evaluator import EfficientPSEvaluator

# detectron2's Cityscapes/COCO panoptic registrations get our evaluator too: it needs neither
# panopticapi nor the Cityscapes evaluators that current detectron2 main cannot import.
PANOPTIC_TYPES = {"efficientps_panoptic_seg", "cityscapes_panoptic_seg", "coco_panoptic_seg"}


def build_evaluator(cfg, dataset_name, output_dir=None):
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if evaluator_type in PANOPTIC_TYPES:
        return DatasetEvaluators(
            [
                EfficientPSEvaluator(
                    dataset_name,
                    # the tables the model and the mapper are built with (one source)
                    class_tables=PanopticClassTables.from_config(cfg),
                    distributed=True,
                    output_dir=output_dir,
                )
            ]
        )
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
        f"efficientps evaluates panoptic datasets ({sorted(PANOPTIC_TYPES)})"
    )
