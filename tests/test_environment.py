"""The installed environment: detectron2 works on this machine's NumPy, Pillow and CPU."""

import numpy as np
import PIL
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, PolygonMasks
from detectron2.utils.events import EventStorage

from .helpers import stock_mask_rcnn_cfg, synthetic_instances


def _version_tuple(version):
    return tuple(int(part) for part in version.split(".")[:2])


def test_detectron2_imports_with_current_numpy_and_pillow():
    # The snapshot used NumPy aliases removed in 1.24 and Image.LINEAR removed in Pillow 10;
    # the environment must import detectron2's modules that used them under what we installed.
    import detectron2.data.transforms.transform as transform
    import detectron2.evaluation.sem_seg_evaluation  # noqa: F401
    import detectron2.model_zoo  # noqa: F401
    import detectron2.utils.visualizer  # noqa: F401

    assert _version_tuple(np.__version__) >= (1, 24)
    assert _version_tuple(PIL.__version__) >= (10, 0)
    assert transform.ExtentTransform.__init__.__defaults__[0] == PIL.Image.BILINEAR


def test_stock_mask_rcnn_r50_fpn_infers_and_trains_on_cpu():
    torch.manual_seed(0)
    model = build_model(stock_mask_rcnn_cfg())
    image = torch.rand(3, 200, 249) * 255

    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": image, "height": 100, "width": 125}])
    assert output["instances"].image_size == (100, 125)

    model.train()
    gt = synthetic_instances(200, 249)
    with EventStorage():
        losses = model([{"image": image, "instances": gt}])
        total = sum(losses.values())
        total.backward()
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert torch.isfinite(total)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


def test_polygon_masks_rasterise_under_current_numpy():
    square = [np.array([2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0])]
    polygons = PolygonMasks([square, square])
    bitmasks = BitMasks.from_polygon_masks(polygons, 10, 10)
    assert bitmasks.tensor.dtype == torch.bool
    assert int(bitmasks.tensor[0].sum()) == 36
    assert polygons.area().tolist() == [36.0, 36.0]
    assert BitMasks(bitmasks.tensor).nonempty().tolist() == [True, True]


def test_sem_seg_evaluator_under_current_numpy(tmp_path):
    from detectron2.evaluation import SemSegEvaluator

    gt = np.array([[0, 0, 0, 1], [0, 0, 1, 255]], dtype=np.uint8)
    gt_file = tmp_path / "gt.png"
    PIL.Image.fromarray(gt).save(gt_file)
    name = f"efficientps_env_semseg_{tmp_path.name}"
    records = [{"file_name": "x.png", "sem_seg_file_name": str(gt_file)}]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255)
    try:
        evaluator = SemSegEvaluator(name, distributed=False, output_dir=None)
        evaluator.reset()
        logits = torch.zeros(2, 2, 4)
        logits[1, :, 2:] = 1.0  # predicts class 1 on the right half, 0 on the left
        logits[1, 0, 1] = 2.0  # one wrong pixel
        evaluator.process([{"file_name": "x.png"}], [{"sem_seg": logits}])
        results = evaluator.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # class 0: gt 5 px, pred 3 px all correct -> IoU 3/5; class 1: gt 2 px, pred 4 px (the
    # ignored pixel does not count) of which 2 correct -> IoU 2/4.
    assert results["IoU-a"] == pytest.approx(60.0)
    assert results["IoU-b"] == pytest.approx(50.0)
    assert results["mIoU"] == pytest.approx(55.0)


def test_visualizer_draws_panoptic_under_current_numpy():
    from detectron2.utils.visualizer import Visualizer

    metadata = MetadataCatalog.get("efficientps_env_visualizer")
    metadata.set(
        thing_classes=["car"],
        stuff_classes=["road", "car"],
        thing_colors=[(0, 0, 142)],
        stuff_colors=[(128, 64, 128), (0, 0, 142)],
    )
    panoptic = torch.zeros(40, 60, dtype=torch.int32)
    panoptic[:20] = 1
    panoptic[25:35, 10:30] = 2
    segments = [
        {"id": 1, "category_id": 0, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True, "score": 0.9},
    ]
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    drawn = Visualizer(image, metadata).draw_panoptic_seg(panoptic, segments).get_image()
    assert drawn.shape == (40, 60, 3)
    assert not np.array_equal(drawn, image)


def test_compiled_only_op_raises_clear_error():
    from detectron2 import _C

    if not getattr(_C, "IS_EFFICIENTPS_PLACEHOLDER", False):
        pytest.skip("a compiled detectron2 is installed: nms_rotated really exists here")
    from detectron2.layers import nms_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0], [5.0, 5.0, 4.0, 4.0, 10.0]])
    with pytest.raises(RuntimeError, match=r"nms_rotated.*compiled.*DETECTRON2_SRC"):
        nms_rotated(boxes, torch.tensor([0.9, 0.8]), 0.5)
    with pytest.raises(RuntimeError, match=r"deform_conv_forward.*Build detectron2 from source"):
        _C.deform_conv_forward(torch.zeros(1))
