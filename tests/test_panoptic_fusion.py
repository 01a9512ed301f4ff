"""The paper's panoptic fusion on hand-built tensors, and the vectorised mask-logit pasting."""

import math

import numpy as np
import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from torch.nn import functional as F

from efficientps.class_tables import PanopticClassTables
from efficientps.modeling.meta_arch import (
    BoxMaskLogits,
    EfficientPSPanopticFusion,
    fuse_panoptic,
    fused_instance_logits,
    paste_mask_logits,
)
from efficientps_runtime.fusion_params import FusionParams

H, W = 8, 10
# Three classes: channel 0 "road" (stuff), channel 1 "sky" (stuff), channel 2 "car" (thing 0).
STUFF, THINGS = [0, 1], [2]


def semantic(road_rows=(0, 8), car_box=None, car_logit=3.0):
    """Road logits 2 on rows [a, b), sky 1 elsewhere; the car channel high inside car_box."""
    sem = torch.zeros(3, H, W)
    sem[1] = 1.0
    sem[0, road_rows[0] : road_rows[1]] = 2.0
    if car_box is not None:
        x0, y0, x1, y1 = car_box
        sem[2, y0:y1, x0:x1] = car_logit
    return sem


def instance(box, logit=4.0):
    """Full-image mask logits: ``logit`` inside the box, 0 outside (as the pasting gives)."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(H, W)
    mask[y0:y1, x0:x1] = logit
    return mask


def fuse(sem, masks, boxes, scores, classes=None, **kw):
    masks = torch.stack(masks) if masks else torch.zeros(0, H, W)
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor(scores, dtype=torch.float32)
    classes = torch.zeros(len(scores), dtype=torch.int64) if classes is None else classes
    kw.setdefault("stuff_area", 0)
    return fuse_panoptic(
        sem, masks, boxes, classes, scores, stuff_channels=STUFF, thing_channels=THINGS, **kw
    )


def segment_of(panoptic, segments, y, x):
    sid = int(panoptic[y, x])
    return next((s for s in segments if s["id"] == sid), None)


def test_fused_logit_formula():
    a, b = torch.tensor([2.0, -2.0, 2.0]), torch.tensor([1.0, -1.0, -3.0])
    # Values by hand: (sigmoid(a) + sigmoid(b)) * (a + b).
    # (0.8807971 + 0.7310586) * 3 = 4.8355670; (0.1192029 + 0.2689414) * -3 = -1.1644330;
    # (0.8807971 + 0.0474259) * -1 = -0.9282230.
    expected = torch.tensor([4.8355670, -1.1644330, -0.9282230])
    torch.testing.assert_close(fused_instance_logits(a, b), expected, atol=1e-6, rtol=0)


def test_instance_and_stuff_with_class_zero_not_special():
    box = (2, 2, 6, 6)
    sem = semantic(car_box=box)
    panoptic, segments = fuse(sem, [instance(box)], [box], [0.9])
    car = segment_of(panoptic, segments, 3, 3)
    assert car["isthing"] and car["category_id"] == 2 and abs(car["score"] - 0.9) < 1e-6
    assert car["area"] == 16 and car["instance_index"] == 0
    road = segment_of(panoptic, segments, 0, 0)
    # Channel 0 (road) is an ordinary stuff class, not "things" as in detectron2's COCO fusion.
    assert road == {"id": road["id"], "category_id": 0, "isthing": False, "area": H * W - 16}
    assert panoptic.dtype == torch.int32 and (panoptic > 0).all()
    assert sorted(s["id"] for s in segments) == list(range(1, len(segments) + 1))


def test_score_threshold():
    box = (2, 2, 6, 6)
    panoptic, segments = fuse(semantic(car_box=box), [instance(box)], [box], [0.49])
    assert not any(s["isthing"] for s in segments)
    # The car pixels are a thing class in the semantic prediction: void, not road.
    assert (panoptic[2:6, 2:6] == 0).all()
    panoptic, segments = fuse(
        semantic(car_box=box), [instance(box)], [box], [0.49], score_thresh=0.4
    )
    assert any(s["isthing"] for s in segments)


def test_overlap_filter_drops_mostly_covered_instance_and_trims_the_rest():
    first, second, third = (0, 0, 6, 4), (1, 0, 7, 4), (4, 2, 10, 8)
    sem = semantic(car_box=(0, 0, 10, 8))
    masks = [instance(first), instance(second), instance(third)]
    panoptic, segments = fuse(sem, masks, [first, second, third], [0.9, 0.8, 0.7])
    things = [s for s in segments if s["isthing"]]
    # second: 20 of its 24 pixels taken by first (> 50%) -> dropped.
    assert [s["instance_index"] for s in things] == [0, 2]
    # third: 4 of its 36 pixels taken -> kept, without those pixels.
    assert things[1]["area"] == 36 - 4
    assert segment_of(panoptic, segments, 3, 5)["instance_index"] == 0
    assert segment_of(panoptic, segments, 5, 8)["instance_index"] == 2


def test_overlap_threshold_is_configurable():
    first, second = (0, 0, 6, 4), (1, 0, 7, 4)
    sem = semantic(car_box=(0, 0, 10, 8))
    _, segments = fuse(
        sem, [instance(first), instance(second)], [first, second], [0.9, 0.8], overlap_thresh=0.9
    )
    assert len([s for s in segments if s["isthing"]]) == 2


def test_sorting_by_score_not_input_order():
    low, high = (0, 0, 6, 4), (1, 0, 7, 4)
    sem = semantic(car_box=(0, 0, 10, 8))
    panoptic, segments = fuse(sem, [instance(low), instance(high)], [low, high], [0.6, 0.95])
    assert [s["instance_index"] for s in segments if s["isthing"]] == [1]


def test_ties_keep_detection_order():
    a, b = (0, 0, 6, 4), (1, 0, 7, 4)
    sem = semantic(car_box=(0, 0, 10, 8))
    _, segments = fuse(sem, [instance(a), instance(b)], [a, b], [0.8, 0.8])
    assert [s["instance_index"] for s in segments if s["isthing"]] == [0]
    _, segments = fuse(sem, [instance(b), instance(a)], [b, a], [0.8, 0.8])
    assert [s["instance_index"] for s in segments if s["isthing"]] == [0]


def test_stuff_area_threshold_voids_small_stuff():
    sem = semantic(road_rows=(0, 1))  # road: 10 px, sky: 70 px
    panoptic, segments = fuse(sem, [], [], [], stuff_area=11)
    assert [s["category_id"] for s in segments] == [1]
    assert (panoptic[0] == 0).all() and (panoptic[1:] > 0).all()


def test_uncovered_thing_pixels_are_void():
    box = (2, 2, 6, 6)
    sem = semantic(car_box=(0, 0, 10, 8))  # every pixel predicted "car"
    panoptic, segments = fuse(sem, [instance(box)], [box], [0.9])
    assert (panoptic[2:6, 2:6] > 0).all()
    outside = torch.ones(H, W, dtype=torch.bool)
    outside[2:6, 2:6] = False
    assert (panoptic[outside] == 0).all()  # never reassigned to road or sky


def test_stuff_that_outvotes_an_instance_keeps_the_pixel():
    box = (2, 2, 6, 6)
    sem = semantic(car_box=box, car_logit=-6.0)  # semantic head says "not car" strongly
    panoptic, segments = fuse(sem, [instance(box, logit=0.5)], [box], [0.9])
    assert not any(s["isthing"] for s in segments)
    assert segment_of(panoptic, segments, 3, 3)["category_id"] == 0  # road fills it


def test_no_detections_gives_stuff_only():
    sem = semantic(road_rows=(0, 4))
    panoptic, segments = fuse(sem, [], [], [])
    assert [(s["category_id"], s["area"]) for s in segments] == [(0, 40), (1, 40)]
    assert set(panoptic.unique().tolist()) == {1, 2}


def test_empty_image():
    sem = torch.zeros(3, 0, 0)
    panoptic, segments = fuse_panoptic(
        sem,
        torch.zeros(0, 0, 0),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0),
        stuff_channels=STUFF,
        thing_channels=THINGS,
    )
    assert panoptic.shape == (0, 0) and segments == []


def test_mask_logit_scale_changes_the_vote():
    box = (2, 2, 6, 6)
    sem = semantic(car_box=box, car_logit=-1.0)
    args = ([instance(box, logit=1.0)], [box], [0.9])
    _, plain = fuse(sem, *args)
    _, scaled = fuse(sem, *args, mask_logit_scale=4.0)  # the authors' code
    assert not any(s["isthing"] for s in plain)
    assert any(s["isthing"] for s in scaled)


def test_paste_matches_grid_sample():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 28, 28)
    boxes = torch.tensor([[3.2, 5.1, 40.7, 30.0], [0.0, 0.0, 64.0, 48.0], [50.5, 20.2, 63.0, 47.9]])
    pasted = paste_mask_logits(logits, boxes, 48, 64)
    ys = torch.arange(48) + 0.5
    xs = torch.arange(64) + 0.5
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        gy = (ys - y0) / (y1 - y0) * 2 - 1
        gx = (xs - x0) / (x1 - x0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        expected = F.grid_sample(logits[i : i + 1], grid, align_corners=False)[0, 0]
        torch.testing.assert_close(pasted[i], expected, atol=1e-5, rtol=1e-5)
    assert pasted[0, 40:, :].abs().max() == 0  # zero outside the box
    assert paste_mask_logits(torch.zeros(0, 28, 28), torch.zeros(0, 4), 5, 6).shape == (0, 5, 6)


def random_detections(count, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, 28, 28, generator=generator) * 3
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 4], dim=1)
    boxes[-1] = torch.tensor([0.0, 0.0, width, height])  # one box over the whole image
    return logits, boxes


def test_box_mask_logits_gives_the_pasted_values_on_demand():
    logits, boxes = random_detections(6, 37, 53)
    dense = paste_mask_logits(logits, boxes, 37, 53)
    lazy = BoxMaskLogits(logits[:, None], boxes, 37, 53)
    assert lazy.shape == (6, 37, 53) and len(lazy) == 6
    torch.testing.assert_close(lazy.dense(), dense)
    for row in range(6):
        ys, xs = slice(row, 30), slice(2 * row, 53)
        torch.testing.assert_close(lazy.crop(row, ys, xs), dense[row, ys, xs], atol=1e-5, rtol=0)
    rows = torch.randint(0, 6, (500,))
    ys, xs = torch.randint(0, 37, (500,)), torch.randint(0, 53, (500,))
    torch.testing.assert_close(lazy.at(rows, ys, xs), dense[rows, ys, xs], atol=1e-5, rtol=0)


def test_fusion_on_box_mask_logits_equals_fusion_on_pasted_maps():
    height, width = 48, 64
    logits, boxes = random_detections(12, height, width, seed=3)
    sem = torch.randn(5, height, width, generator=torch.Generator().manual_seed(4)) * 2
    classes = torch.arange(12) % 2
    scores = torch.linspace(0.95, 0.4, 12)
    kw = dict(stuff_channels=[0, 1, 2], thing_channels=[3, 4], stuff_area=0, overlap_thresh=0.3)
    dense = paste_mask_logits(logits, boxes, height, width)
    expected = fuse_panoptic(sem, dense, boxes, classes, scores, **kw)
    lazy = BoxMaskLogits(logits, boxes, height, width)
    actual = fuse_panoptic(sem, lazy, boxes, classes, scores, **kw)
    assert sum(s["isthing"] for s in expected[1]) >= 3  # the instances do compete
    assert torch.equal(actual[0], expected[0]) and actual[1] == expected[1]


def test_channel_argmax_equals_argmax_with_ties_to_the_first_channel():
    from efficientps.channel_argmax import channel_argmax

    logits = torch.randn(7, 31, 45, generator=torch.Generator().manual_seed(5))
    logits[3, :10] = logits[1, :10] = logits[:, :10].max(dim=0).values + 1  # ties: 1 wins
    logits[:, 20] = 0.0  # all equal: channel 0
    assert torch.equal(channel_argmax(logits), logits.argmax(dim=0))
    assert (channel_argmax(logits)[:10] == 1).all() and (channel_argmax(logits)[20] == 0).all()
    assert torch.equal(channel_argmax(logits[:1]), torch.zeros(31, 45, dtype=torch.int64))


# ---- the paper's pixel rule (argmax over stuff logits and every kept instance's FL) ----------


def test_pixel_with_slightly_negative_mask_logit_goes_to_the_instance_when_its_fl_wins():
    box = (2, 2, 6, 6)
    sem = semantic(car_box=box, car_logit=6.0)
    sem[0] = -1.0  # weak stuff: road -1, sky 1 at (3, 3)
    sem[1] = -1.0
    mask = instance(box)
    mask[3, 3] = -0.5  # not in the binary mask, but ML_A + ML_B = 5.5 > every stuff logit
    panoptic, segments = fuse(sem, [mask], [box], [0.9])
    assert segment_of(panoptic, segments, 3, 3)["isthing"]
    panoptic, segments = fuse(sem, [mask], [box], [0.9], pixel_rule="owner")
    assert panoptic[3, 3] == 0  # owner rule: nobody's, and a thing class -> void


def test_a_kept_instance_wins_the_pixels_where_its_fused_logit_is_higher():
    first, second = (0, 0, 6, 4), (4, 0, 10, 4)  # overlap: columns 4-5 (8 of 24 px: kept)
    sem = semantic(car_box=(0, 0, 10, 8))
    masks = [instance(first, logit=0.5), instance(second, logit=5.0)]
    panoptic, segments = fuse(sem, masks, [first, second], [0.9, 0.8])
    assert segment_of(panoptic, segments, 1, 4)["instance_index"] == 1  # higher FL
    assert segment_of(panoptic, segments, 1, 1)["instance_index"] == 0
    panoptic, segments = fuse(sem, masks, [first, second], [0.9, 0.8], pixel_rule="owner")
    assert segment_of(panoptic, segments, 1, 4)["instance_index"] == 0  # taken first


def test_no_fl_where_the_paste_is_zero_even_if_all_stuff_logits_are_negative():
    box = (2, 2, 4, 4)
    sem = torch.full((3, H, W), -3.0)  # every stuff logit negative everywhere
    sem[0, :, 5:] = -2.0  # road is the best stuff on the right
    sem[2, 2:4, 2:4] = 2.0
    panoptic, segments = fuse(sem, [instance(box)], [box], [0.9])
    car = segment_of(panoptic, segments, 3, 3)
    assert car["isthing"] and car["area"] == 4  # FL = 0 outside would have taken all 80 px
    assert segment_of(panoptic, segments, 0, 8)["category_id"] == 0


def test_authors_rule_gives_fl_zero_outside_the_paste():
    # The same image as above: under the authors' rule the car's FL is 0 outside its paste,
    # which beats every (negative) stuff logit, so the car takes the whole image.
    box = (2, 2, 4, 4)
    sem = torch.full((3, H, W), -3.0)
    sem[0, :, 5:] = -2.0
    sem[2, 2:4, 2:4] = 2.0
    panoptic, segments = fuse(sem, [instance(box)], [box], [0.9], pixel_rule="authors")
    assert [s["area"] for s in segments] == [H * W] and segments[0]["isthing"]
    # Where a stuff logit is positive, FL = 0 does not win it.
    sem[1, :, :5] = 0.5  # sky positive on the left
    panoptic, segments = fuse(sem, [instance(box)], [box], [0.9], pixel_rule="authors")
    assert segment_of(panoptic, segments, 0, 0)["category_id"] == 1
    assert segment_of(panoptic, segments, 0, 8)["isthing"]


def test_authors_ml_b_window_by_hand():
    from efficientps_runtime.fusion_core import _authors_box_slices, _box_slices

    box = torch.tensor([10.3, 5.0, 20.0, 15.6]).tolist()  # float32 values, as read from boxes
    # Theirs, inclusive box (10.3, 5.0, 19.0, 14.6): x from int(11.3) = 11 to round(18.0) = 18,
    # y from int(6.0) = 6 to round(13.6) = 14, both ends included.
    assert _authors_box_slices(box, 100, 100) == (slice(6, 15), slice(11, 19))
    assert _box_slices(box, 100, 100) == (slice(5, 16), slice(10, 20))


def test_the_paste_margin_beyond_the_box_competes():
    # 28x28 logits pasted into a box 56 px wide: bilinear weights reach half a cell (1 px)
    # beyond it, so pixel columns 9 and 66 (centres 9.5, 66.5) get non-zero logits although
    # the box spans x 10..66 and touches columns 10..65 only.
    width = 100
    logits = torch.full((1, 28, 28), 6.0)
    boxes = torch.tensor([[10.0, 0.0, 66.0, 8.0]])
    pasted = BoxMaskLogits(logits[:, None], boxes, H, width)
    ys, xs = pasted.window(0)
    assert (xs.start, xs.stop) == (9, 67) and (ys.start, ys.stop) == (0, 8)
    row = pasted.crop(0, slice(4, 5), slice(0, width))[0]
    assert row[9] > 0 and row[66] > 0 and row[8] == 0 and row[67] == 0
    sem = torch.zeros(3, H, width)
    sem[0] = 1.0  # road 1 everywhere; car channel 0: ML_B = 0 at columns 9 and 66
    panoptic, segments = fuse_panoptic(
        sem, pasted, boxes, torch.zeros(1, dtype=torch.int64), torch.tensor([0.9]),
        stuff_channels=STUFF, thing_channels=THINGS, stuff_area=0,
    )  # fmt: skip
    # Column 9: ML_A = 6 * 0.5 (half the weight reaches) -> FL = (0.95 + 0.5) * 3 > 1.
    assert segment_of(panoptic, segments, 4, 9)["isthing"]
    assert segment_of(panoptic, segments, 4, 66)["isthing"]
    assert not segment_of(panoptic, segments, 4, 8)["isthing"]


def _quality_inputs():
    """One detection on a 10x20 image: box (0, 0, 20, 10), score 0.8, mask logits 2 on the
    left half of the 28 columns and -1 elsewhere; the semantic argmax is the detection's
    channel 1 on the left quarter of the image (x < 5) and 0 elsewhere."""
    sem_argmax = np.zeros((10, 20), np.int64)
    sem_argmax[:, :5] = 1
    boxes = np.array([[0.0, 0.0, 20.0, 10.0]], np.float32)
    masks = np.full((1, 28, 28), -1.0, np.float32)
    masks[:, :, :14] = 2.0
    return sem_argmax, boxes, np.array([0.8], np.float32), np.array([1]), masks


def test_quality_features_by_hand_in_numpy_and_torch():
    from efficientps.modeling.meta_arch.torch_ops import TorchOps
    from efficientps_runtime.array_ops import NUMPY
    from efficientps_runtime.detection_quality import quality_features

    inputs = _quality_inputs()
    features = quality_features(NUMPY, *inputs)
    # logit(0.8); sigmoid(2) in the mask; half the cells; cell centres x = (j + 0.5) * 20/28:
    # the mask's columns j < 14 reach x < 10, of which x < 5 (j <= 6: 7 of 14) agree;
    # 0.5 * log(200 / 200) = 0.
    expected = [math.log(4.0), 1 / (1 + math.exp(-2.0)), 0.5, 0.5, 0.0]
    assert features.shape == (1, 5)
    assert features[0].tolist() == pytest.approx(expected, abs=1e-6)
    tensors = [torch.as_tensor(a) for a in inputs]
    in_torch = quality_features(TorchOps("cpu"), *tensors).numpy()
    assert in_torch[0].tolist() == pytest.approx(features[0].tolist(), abs=1e-6)


def test_learned_quality_starts_as_the_box_score_and_replaces_it_in_the_fusion():
    from efficientps.modeling.meta_arch.learned_fusion import LearnedDetectionQuality

    quality = LearnedDetectionQuality(num_things=2)
    sem_argmax, boxes, scores, channels, masks = _quality_inputs()
    detections = Instances((10, 20), pred_boxes=Boxes(torch.as_tensor(boxes)),
                           scores=torch.as_tensor(scores), pred_classes=torch.tensor([0]),
                           pred_mask_logits=torch.as_tensor(masks)[:, None])  # fmt: skip
    features = quality.features(torch.as_tensor(sem_argmax), detections, torch.tensor([1]))
    assert quality(features, detections.pred_classes).item() == pytest.approx(0.8, abs=1e-6)
    # Weights on agreement: the same detection below and above the fusion's threshold.
    box = (2, 2, 6, 6)
    sem = semantic(car_box=box)
    mask = torch.full((1, 1, 28, 28), 4.0)
    weak = Instances((H, W), pred_boxes=Boxes(torch.tensor([box], dtype=torch.float32)),
                     scores=torch.tensor([0.3]), pred_classes=torch.tensor([0]),
                     pred_mask_logits=mask)  # fmt: skip
    fusion = EfficientPSPanopticFusion(
        class_tables=PanopticClassTables(tuple(STUFF), tuple(THINGS)),
        params=FusionParams(stuff_area=0),
        learned=True,
    )
    with torch.no_grad():
        assert not any(s["isthing"] for s in fusion(sem, weak)[1])  # q = 0.3 < 0.5
        fusion.quality.feature_weights.copy_(torch.tensor([1.0, 0.0, 0.0, 3.0, 0.0]))
        segments = fusion(sem, weak)[1]  # the car channel agrees everywhere: q = 0.93
    [car] = [s for s in segments if s["isthing"]]
    assert car["score"] == pytest.approx(1 / (1 + math.exp(-(math.log(0.3 / 0.7) + 3))), 1e-5)


def test_learned_quality_loss_labels_true_positives_by_mask_iou():
    from efficientps.modeling.meta_arch.learned_fusion import LearnedDetectionQuality

    quality = LearnedDetectionQuality(num_things=2)
    # Ground truth: one thing of class 0 filling x < 8 of a 8x16 image.
    gt_mask = torch.zeros(1, 8, 16, dtype=torch.bool)
    gt_mask[0, :, :8] = True
    gt = Instances((8, 16), gt_classes=torch.tensor([0]), gt_masks=BitMasks(gt_mask))
    # Three detections with the same constant mask (logit 3) in boxes: the object (class 0,
    # IoU 1: a true positive), the object as class 1 (wrong class), the right half (IoU 0).
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]])
    detections = Instances((8, 16), pred_boxes=Boxes(boxes), scores=torch.tensor([0.9, 0.6, 0.7]),
                           pred_classes=torch.tensor([0, 1, 0]),
                           pred_mask_logits=torch.full((3, 1, 28, 28), 3.0))  # fmt: skip
    sem_logits = torch.zeros(1, 3, 8, 16)
    loss = quality.loss(sem_logits, [detections], [(8, 16)], [gt], torch.tensor([1, 2]))
    # At the start q is the box score: BCE of (0.9, 0.6, 0.7) against (1, 0, 0), positives x2.
    expected = -(2 * math.log(0.9) + math.log(0.4) + math.log(0.3)) / 3
    assert loss["loss_fusion_quality"].item() == pytest.approx(expected, rel=1e-4)
    loss["loss_fusion_quality"].backward()
    # d BCE / d logit = q - label (x2 for positives), averaged: class 0 (2 (0.9 - 1) + 0.7) / 3,
    # class 1 0.6 / 3.
    assert quality.class_bias.grad.tolist() == pytest.approx([0.5 / 3, 0.2], abs=1e-5)
    assert quality.feature_weights.grad.abs().sum() > 0
    empty = quality.loss(sem_logits, [detections[:0]], [(8, 16)], [gt], torch.tensor([1, 2]))
    assert empty["loss_fusion_quality"].item() == 0.0  # no detection: 0, not NaN
