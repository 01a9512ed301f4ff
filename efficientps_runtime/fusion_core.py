"""EfficientPS' panoptic fusion (paper Sec. 3.5), written once for NumPy and torch.

Every function takes the array namespace ``ops`` first (``array_ops.NUMPY`` in the runtime,
``TorchOps(device)`` in the model), so the model on any device and the torch-free runtime run
this one algorithm:

1. detections ranked by score (the box score, or the learned quality: ``detection_quality``),
   those below ``score_thresh`` left out;
2. the greedy overlap filter on their pasted masks (``overlap_filter``);
3. per pixel, the fused logits FL = (sigmoid(ML_A) + sigmoid(ML_B)) * (ML_A + ML_B) of the kept
   instances against the best stuff logit (``pixel_rule``: "argmax", "owner" or "authors");
4. stuff where no instance won and the semantic class is not a thing, stuff segments below the
   minimum area void; segment ids and segments_info (``_assemble``).

Mask logits are pasted where the fusion reads them (``PastedMasks``: a box window, or a list of
pixels), never as (N, H, W) maps. On a GPU no step reads the device per detection: decisions
stay arrays, and the numbers the loops need are read once (``_HostDetections``).
Semantic label 0 is an ordinary class here; which channels are stuff and which are things comes
from the caller's tables.
"""

import math

from .detection_quality import quality, quality_features
from .fusion_params import PIXEL_RULES

NEGATIVE_INFINITY = float("-inf")


def fused_instance_logits(ops, ml_a, ml_b):
    """FL = (sigmoid(ML_A) + sigmoid(ML_B)) * (ML_A + ML_B): agreement amplifies."""
    return (ops.sigmoid(ml_a) + ops.sigmoid(ml_b)) * (ml_a + ml_b)


# ---------------------------------------------------------------------------------------------
# Pasting 28x28 mask logits into the image: bilinear, align_corners=False, zero padding.


def _mask_coordinates(pixels, start, end, mask_size, ops):
    """Position of image pixel centres ``pixels`` in mask-cell coordinates (centres at k + 0.5)."""
    extent = ops.clip(end - start, 1e-6)
    return (pixels + 0.5 - start) / extent * mask_size - 0.5


def interpolation_matrix(ops, start, end, mask_size, first_pixel, end_pixel):
    """(R, end_pixel - first_pixel, mask_size) bilinear weights from image pixels to mask cells;
    ``start``, ``end``: (R,) box extents along one axis."""
    pixels = ops.arange(first_pixel, end_pixel, ops.float32)
    pos = _mask_coordinates(pixels[None, :], start[:, None], end[:, None], mask_size, ops)
    cells = ops.arange(0, mask_size, ops.float32)
    return ops.clip(1 - ops.abs(pos[:, :, None] - cells[None, None, :]), 0)


def paste_dense(ops, mask_logits, boxes, height, width):
    """(R, height, width) pasted logits of (R, M, M) ``mask_logits`` in ``boxes`` (R, 4): two
    batched matrix products (bilinear interpolation is separable), 0 beyond half a mask cell
    around each box."""
    rows = interpolation_matrix(ops, boxes[:, 1], boxes[:, 3], mask_logits.shape[1], 0, height)
    cols = interpolation_matrix(ops, boxes[:, 0], boxes[:, 2], mask_logits.shape[2], 0, width)
    return rows @ mask_logits @ ops.swap_last_axes(cols)


def _support(start, end, mask_size, length):
    """The pixels whose centre lies within half a mask cell of [start, end]: where the paste
    can be non-zero (start - cell/2 < p + 0.5 < end + cell/2, cell = extent / mask size)."""
    half_cell = max(end - start, 1e-6) / (2 * mask_size)
    first = math.floor(start - half_cell - 0.5) + 1
    stop = math.ceil(end + half_cell - 0.5)
    return slice(min(max(first, 0), length), min(max(stop, 0), length))


class PastedMasks:
    """``paste_dense(ops, mask_logits, boxes, height, width)`` computed where it is read:
    ``window(r)`` (where detection r's paste can be non-zero), ``crop(r, ys, xs)`` (its values
    there) and ``at(rows, ys, xs)`` (values at pixel lists); ``dense()`` is the full array."""

    def __init__(self, ops, mask_logits, boxes, height, width):
        self.ops = ops
        self.masks = ops.astype(mask_logits, ops.float32)
        self.boxes = ops.astype(boxes, ops.float32)
        self.shape = (len(self.masks), height, width)
        self._host_boxes = None  # read from the device once, for every window

    def __len__(self):
        return self.shape[0]

    def dense(self):
        return paste_dense(self.ops, self.masks, self.boxes, *self.shape[1:])

    def window(self, row):
        if self._host_boxes is None:
            self._host_boxes = self.boxes.tolist()
        x0, y0, x1, y1 = self._host_boxes[row]
        mask_height, mask_width = self.masks.shape[1:]
        return (
            _support(y0, y1, mask_height, self.shape[1]),
            _support(x0, x1, mask_width, self.shape[2]),
        )

    def crop(self, row, ys, xs):
        box = self.boxes[row : row + 1]
        mask = self.masks[row]
        rows = interpolation_matrix(
            self.ops, box[:, 1], box[:, 3], mask.shape[0], ys.start, ys.stop
        )
        cols = interpolation_matrix(
            self.ops, box[:, 0], box[:, 2], mask.shape[1], xs.start, xs.stop
        )
        return rows[0] @ mask @ cols[0].T

    def at(self, rows, ys, xs):
        """Pasted logits of detection ``rows[k]`` at pixel (``ys[k]``, ``xs[k]``)."""
        ops = self.ops
        boxes = self.boxes[rows]
        height, width = self.masks.shape[1:]
        pos_y = _mask_coordinates(
            ops.astype(ys, ops.float32), boxes[:, 1], boxes[:, 3], height, ops
        )
        pos_x = _mask_coordinates(ops.astype(xs, ops.float32), boxes[:, 0], boxes[:, 2], width, ops)
        top, left = ops.floor(pos_y), ops.floor(pos_x)
        frac_y, frac_x = pos_y - top, pos_x - left
        top, left = ops.astype(top, ops.int64), ops.astype(left, ops.int64)
        value = ops.zeros(pos_y.shape, ops.float32)
        # The 2x2 cells around each position; cells outside the mask are zero padding.
        for dy, weight_y in ((0, 1 - frac_y), (1, frac_y)):
            for dx, weight_x in ((0, 1 - frac_x), (1, frac_x)):
                cy, cx = top + dy, left + dx
                inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
                cell = self.masks[rows, ops.clip(cy, 0, height - 1), ops.clip(cx, 0, width - 1)]
                value = value + ops.where(inside, weight_y * weight_x * cell, 0.0)
        return value


class DenseMasks:
    """An (N, H, W) array of pasted logits behind ``PastedMasks``' interface (tests, oracles)."""

    def __init__(self, ops, dense):
        self.ops, self.array = ops, dense
        self.shape = tuple(dense.shape)

    def __len__(self):
        return self.shape[0]

    def dense(self):
        return self.array

    def window(self, row):
        ys, xs = self.ops.nonzero_2d(self.array[row] != 0)
        if len(ys) == 0:
            return slice(0, 0), slice(0, 0)
        return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)

    def crop(self, row, ys, xs):
        return self.array[row, ys, xs]

    def at(self, rows, ys, xs):
        return self.array[rows, ys, xs]


# ---------------------------------------------------------------------------------------------
# The fusion.


def _box_slices(box, height, width):
    """The pixels a box (x0, y0, x1, y1; host numbers) touches."""
    x0, y0, x1, y1 = box
    xs = slice(max(0, int(x0)), min(width, int(-(-x1 // 1))))
    ys = slice(max(0, int(y0)), min(height, int(-(-y1 // 1))))
    return ys, xs


def _authors_box_slices(box, height, width):
    """The ML_B window of the authors' code: from int(x0 + 1) to round(x1 - 1) inclusive in
    their inclusive coordinates (x1 - 1 there), i.e. about a pixel inside the box."""
    x0, y0, x1, y1 = box
    inclusive_x1, inclusive_y1 = x1 - 1, y1 - 1  # detectron2's continuous box -> theirs
    xs = slice(max(int(x0 + 1), 0), min(int(round(inclusive_x1 - 1)) + 1, width))
    ys = slice(max(int(y0 + 1), 0), min(int(round(inclusive_y1 - 1)) + 1, height))
    return ys, xs


def checked_pixel_rule(pixel_rule, name="pixel_rule"):
    """``pixel_rule`` if it is one of PIXEL_RULES, else an error naming ``name``."""
    if pixel_rule not in PIXEL_RULES:
        raise ValueError(f"{name}={pixel_rule!r}; expected one of {PIXEL_RULES}")
    return pixel_rule


def overlap_filter(ops, masks, overlap_thresh, order):
    """Greedy overlap filter over detections in ``order`` (best first).

    An instance whose binary mask (logit > 0) has more than ``overlap_thresh`` of its pixels
    already taken is dropped; otherwise its free pixels become taken. ``masks``: PastedMasks or
    DenseMasks; ``order`` (K,) visits detection ``order[k]`` as instance k.

    Returns:
        owner: (H, W) int64 index k of the instance that took each pixel, -1 for none.
        kept: (K,) bool.
    """
    _, height, width = masks.shape
    owner = ops.full((height, width), -1, ops.int64)
    kept = ops.zeros((len(order),), ops.bool)
    for i, row in enumerate(order.tolist()):
        ys, xs = masks.window(row)  # the paste is 0 elsewhere: sigmoid 0.5, not > 0.5
        if ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        mask = masks.crop(row, ys, xs) > 0
        region = owner[ys, xs]  # a view: written in place
        free = mask & (region < 0)
        area = mask.sum()
        # Decided as an array, not on the host (on a GPU each host read waits for the device).
        keep = (area > 0) & (area - free.sum() <= overlap_thresh * area)
        region[...] = ops.where(free & keep, i, region)
        kept[i] = keep
    return owner, kept


def fuse(
    ops,
    sem_logits,
    masks,
    boxes,
    classes,
    scores,
    *,
    stuff_channels,
    thing_channels,
    score_thresh=0.5,
    overlap_thresh=0.5,
    stuff_area=2048,
    mask_logit_scale=1.0,
    pixel_rule="argmax",
    semantic=None,
):
    """Fuse semantic logits and instance mask logits into a panoptic map (paper Sec. 3.5).

    Args:
        sem_logits: (C, H, W) float32 semantic logits over all classes.
        masks: the detections' pasted mask logits (``PastedMasks`` or ``DenseMasks``).
        boxes: (N, 4) boxes (x0, y0, x1, y1) in pixels. classes: (N,) thing indices.
        scores: (N,) what detections are ranked and thresholded by.
        stuff_channels / thing_channels: semantic channel of stuff class k / thing class j.
        score_thresh: instances below it are ignored. overlap_thresh: see ``overlap_filter``.
        stuff_area: stuff segments with fewer pixels become void.
        mask_logit_scale: ML_A multiplier (the authors' code uses 4; the paper 1).
        pixel_rule: "argmax" (the paper): every kept instance's fused logits compete with the
            stuff logits wherever its paste is non-zero; "owner": an instance competes only
            on the pixels the overlap filter gave it; "authors": as their code, "argmax" with
            FL = 0 (not out of the vote) where the paste is 0 and their ML_B box window.
        semantic: the (H, W) semantic argmax of ``sem_logits`` if the caller has it already.

    Returns:
        panoptic: (H, W) int32, 0 = void, segment ids from 1.
        segments_info: list of {"id", "category_id" (semantic channel), "isthing", "area",
            and "score", "instance_index" (row in the inputs) for things}.
    """
    checked_pixel_rule(pixel_rule)
    stuff_list = [int(c) for c in stuff_channels]
    thing_channels = ops.asarray([int(c) for c in thing_channels], ops.int64)
    instances = _Detections(ops, masks, boxes, thing_channels[classes], scores, score_thresh)
    # 1.-2. Confident instances, highest score first; the overlap filter drops instances.
    owner, kept = overlap_filter(ops, masks, overlap_thresh, instances.order)
    # 3.-5. Which kept instance (if any) wins each pixel over the stuff logits.
    fused = _FusedLogits(ops, sem_logits, mask_logit_scale)
    if pixel_rule in ("argmax", "authors"):
        winner = _argmax_winner(fused, instances, kept, stuff_list, authors=pixel_rule == "authors")
    else:
        winner = _owner_winner(fused, instances, owner, stuff_list)
    # 6.-7. Stuff where no instance won and the semantic class is not a thing; assemble.
    if semantic is None:
        semantic = ops.argmax(sem_logits, 0)
    stuff_map = _stuff_map(ops, semantic, sem_logits.shape[0], winner >= 0, thing_channels)
    return _assemble(ops, winner, kept, stuff_map, instances, stuff_list, stuff_area)


def fuse_detections(
    ops,
    sem_logits,
    boxes,
    scores,
    classes,
    mask_logits,
    *,
    stuff_channels,
    thing_channels,
    params,
    quality_weights=None,
):
    """The fusion of one image's detections, as the model and the runtime run it.

    Args:
        sem_logits: (C, H, W) float32 semantic logits; the detections are at the same size.
        boxes (N, 4), scores (N,), classes (N,) thing indices, mask_logits (N, M, M) of the
            detection's class.
        params: ``FusionParams``. quality_weights: None (paper: rank by box score) or the
            learned quality's (feature_weights (5,), class_bias (T,)) arrays.
    Returns: as ``fuse``; a thing segment's "score" is what it was ranked by.
    """
    height, width = sem_logits.shape[-2:]
    boxes = ops.astype(boxes, ops.float32)
    scores = ops.astype(scores, ops.float32)
    # Read by the quality and by the stuff map: the full-image argmax once.
    semantic = ops.argmax(sem_logits, 0)
    if quality_weights is not None and len(scores):
        thing_table = ops.asarray([int(c) for c in thing_channels], ops.int64)
        features = quality_features(
            ops,
            semantic,
            boxes,
            scores,
            thing_table[classes],
            ops.astype(mask_logits, ops.float32),
        )
        scores = quality(ops, features, classes, *quality_weights)
    masks = PastedMasks(ops, mask_logits, boxes, height, width)
    tables = {"stuff_channels": stuff_channels, "thing_channels": thing_channels}
    settings = {
        "score_thresh": params.score_thresh,
        "overlap_thresh": params.overlap_thresh,
        "stuff_area": params.stuff_area_at(height, width),
        "mask_logit_scale": params.mask_logit_scale,
        "pixel_rule": params.pixel_rule,
    }
    return fuse(
        ops, sem_logits, masks, boxes, classes, scores, semantic=semantic, **tables, **settings
    )


class _Detections:
    """The detections' masks, boxes, semantic channels and scores; ``order`` lists those at or
    above the threshold by score, highest first (stable: ties keep detection order)."""

    def __init__(self, ops, masks, boxes, channels, scores, score_thresh):
        self.ops = ops
        self.masks, self.boxes, self.channels, self.scores = masks, boxes, channels, scores
        candidates = ops.nonzero(scores >= score_thresh)
        self.order = candidates[ops.argsort_descending(scores[candidates])]
        self._host = None

    @property
    def host(self):
        """order, boxes, channels and scores as Python lists, read once."""
        if self._host is None:
            parts = (self.order, self.boxes, self.channels, self.scores)
            self._host = _HostDetections(self.ops, *parts)
        return self._host


class _HostDetections:
    def __init__(self, ops, order, boxes, channels, scores):
        parts = (order, boxes.reshape(-1), channels, scores)
        values = ops.cat([ops.astype(part, ops.float64) for part in parts]).tolist()
        n, k = len(channels), len(order)
        self.order = [int(v) for v in values[:k]]
        flat_boxes = values[k : k + 4 * n]
        self.boxes = [flat_boxes[4 * i : 4 * i + 4] for i in range(n)]
        self.channels = [int(v) for v in values[k + 4 * n : k + 5 * n]]
        self.scores = values[k + 5 * n :]


class _FusedLogits:
    """FL of one detection's (or per-pixel detections') ML_A and ML_B."""

    def __init__(self, ops, sem_logits, mask_logit_scale):
        self.ops, self.sem_logits, self.scale = ops, sem_logits, mask_logit_scale

    def __call__(self, ml_a, ml_b):
        if self.scale != 1.0:
            ml_a = ml_a * self.scale
        return fused_instance_logits(self.ops, ml_a, ml_b)


def _best_stuff_logit(ops, sem_logits, stuff_channels):
    """Running maximum over the stuff channels (a list) of (C, ...) logits (no copy of them)."""
    best = ops.full(sem_logits.shape[1:], NEGATIVE_INFINITY, ops.float32)
    for channel in stuff_channels:
        ops.maximum(best, sem_logits[channel], out=best)
    return best


def _argmax_winner(fused, instances, kept, stuff_channels, authors=False):
    """argmax over [stuff logits, FL_1..FL_K] per pixel, as a running maximum.

    Stuff channels come first and instances follow in score order, so ties go to stuff, then
    to the higher-scoring instance. Returns (H, W) int64: the winning instance k, or -1.
    ``authors``: an instance's FL is 0 where its paste is 0 (so the first kept instance takes
    every pixel whose stuff logits are all negative), and ML_B is read in their box window.
    """
    ops, sem_logits = fused.ops, fused.sem_logits
    height, width = sem_logits.shape[-2:]
    best = _best_stuff_logit(ops, sem_logits, stuff_channels)
    winner = ops.full((height, width), -1, ops.int64)
    box_slices = _authors_box_slices if authors else _box_slices
    host = instances.host
    for k in ops.nonzero(kept).tolist():
        detection = host.order[k]
        ys, xs = instances.masks.window(detection)
        ml_a = instances.masks.crop(detection, ys, xs)
        # ML_B: the class's semantic logits inside the box (pixels it touches), 0 elsewhere.
        box_ys, box_xs = box_slices(host.boxes[detection], height, width)
        inner_ys = slice(max(box_ys.start, ys.start), min(box_ys.stop, ys.stop))
        inner_xs = slice(max(box_xs.start, xs.start), min(box_xs.stop, xs.stop))
        ml_b = ops.zeros(ml_a.shape, ops.float32)
        if inner_ys.stop > inner_ys.start and inner_xs.stop > inner_xs.start:
            ml_b[
                inner_ys.start - ys.start : inner_ys.stop - ys.start,
                inner_xs.start - xs.start : inner_xs.stop - xs.start,
            ] = sem_logits[host.channels[detection], inner_ys, inner_xs]
        logits = fused(ml_a, ml_b)
        if not authors:
            # Where the paste is 0 the instance does not compete (not FL = 0, which would win
            # every pixel whose stuff logits are all negative).
            ops.fill_where(logits, ml_a == 0, NEGATIVE_INFINITY)
        else:
            # Outside its paste window the instance's FL is 0: it wins where all is negative.
            outside = best < 0
            outside[ys, xs] = False
            ops.fill_where(best, outside, 0.0)
            ops.fill_where(winner, outside, k)
        # Views of the running maximum, updated in place without boolean indexing (which
        # reads its count on the host).
        region_best, region_winner = best[ys, xs], winner[ys, xs]
        better = logits > region_best
        region_best[...] = ops.where(better, logits, region_best)
        ops.fill_where(region_winner, better, k)
    return winner


def _owner_winner(fused, instances, owner, stuff_channels):
    """Each pixel's owner (from the overlap filter) against the best stuff logit, if any."""
    ops = fused.ops
    winner = ops.full(owner.shape, -1, ops.int64)
    ys, xs = ops.nonzero_2d(owner >= 0)
    if len(ys) == 0:
        return winner
    owners = owner[ys, xs]
    detection = instances.order[owners]
    ml_a = instances.masks.at(detection, ys, xs)
    # Owned pixels are where ML_A > 0; ML_B is read there (inside the box or its paste margin).
    ml_b = fused.sem_logits[instances.channels[detection], ys, xs]
    logits = fused(ml_a, ml_b)
    best_stuff = _best_stuff_logit(ops, fused.sem_logits[:, ys, xs], stuff_channels)
    wins = logits > best_stuff  # stuff first in the stack: ties go to stuff
    winner[ys, xs] = ops.where(wins, owners, -1)
    return winner


def _stuff_map(ops, semantic, num_channels, instance_pixels, thing_channels):
    """The semantic argmax where no instance won and the class is stuff; -1 elsewhere."""
    is_thing_channel = ops.zeros((num_channels,), ops.bool)
    is_thing_channel[thing_channels] = True
    void = instance_pixels | is_thing_channel[semantic]
    return ops.where(void, -1, semantic)


def _assemble(ops, winner, kept, stuff_map, instances, stuff_channels, stuff_area):
    """Panoptic ids and segments_info through lookup tables (one gather per map).

    Thing pixels without a surviving instance stay void (0); stuff classes smaller than
    ``stuff_area`` become void. The areas are counted as arrays and read once.
    """
    num_instances = len(instances.order)
    num_channels = max(stuff_channels) + 1 if stuff_channels else 0
    # Shifted by one so that -1 (none) is bin 0: no boolean selection of the pixels first.
    instance_areas = ops.bincount(winner + 1, num_instances + 1)[1:]
    stuff_areas = ops.bincount(stuff_map + 1, num_channels + 1)[1:]
    counts = ops.cat(
        [ops.astype(kept, ops.int64), instance_areas[:num_instances], stuff_areas[:num_channels]]
    ).tolist()
    kept_list, instance_areas = counts[:num_instances], counts[num_instances : 2 * num_instances]
    stuff_areas = counts[2 * num_instances :]
    host = instances.host
    segments_info = []
    instance_ids = [0] * (num_instances + 1)
    for k in range(num_instances):
        if not kept_list[k] or instance_areas[k] == 0:
            continue
        detection = host.order[k]
        instance_ids[k + 1] = len(segments_info) + 1
        segments_info.append(
            {
                "id": len(segments_info) + 1,
                "category_id": host.channels[detection],
                "isthing": True,
                "score": host.scores[detection],
                "area": instance_areas[k],
                "instance_index": detection,
            }
        )
    stuff_ids = [0] * (num_channels + 1)
    for channel in stuff_channels:
        area = stuff_areas[channel]
        if area == 0 or area < stuff_area:
            continue
        stuff_ids[channel + 1] = len(segments_info) + 1
        segments_info.append(
            {"id": len(segments_info) + 1, "category_id": channel, "isthing": False, "area": area}
        )
    instance_ids = ops.asarray(instance_ids, ops.int32)
    stuff_ids = ops.asarray(stuff_ids, ops.int32)
    panoptic = ops.where(winner >= 0, instance_ids[winner + 1], stuff_ids[stuff_map + 1])
    return panoptic, segments_info
