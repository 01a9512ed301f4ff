"""EfficientPS' panoptic fusion (paper Sec. 3.5) in NumPy, step for step as the PyTorch model.

The same rules as ``efficientps.modeling.meta_arch.panoptic_fusion`` (tested against it on the
same inputs): confident detections by score, the overlap filter on the pasted masks, the fused
logits FL = (sigmoid(ML_A) + sigmoid(ML_B)) * (ML_A + ML_B) against the best stuff logit per
pixel, stuff segments below the minimum area dropped. Mask logits are pasted only inside each
detection's window (bilinear, align_corners=False, zero padding), never as (N, H, W) maps.
"""

import math

import numpy as np

from .fusion_params import FusionParams


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def fused_instance_logits(ml_a, ml_b):
    """FL = (sigmoid(ML_A) + sigmoid(ML_B)) * (ML_A + ML_B)."""
    return (_sigmoid(ml_a) + _sigmoid(ml_b)) * (ml_a + ml_b)


def _interpolation_matrix(start, end, mask_size, first_pixel, end_pixel):
    """(end_pixel - first_pixel, mask_size) bilinear weights from image pixels to mask cells."""
    start, end = np.float32(start), np.float32(end)
    pixels = np.arange(first_pixel, end_pixel, dtype=np.float32)
    extent = max(end - start, np.float32(1e-6))
    pos = (pixels + np.float32(0.5) - start) / extent * np.float32(mask_size) - np.float32(0.5)
    cells = np.arange(mask_size, dtype=np.float32)
    return np.clip(1 - np.abs(pos[:, None] - cells[None, :]), 0, None).astype(np.float32)


def _support(start, end, mask_size, length):
    half_cell = max(end - start, 1e-6) / (2 * mask_size)
    first = math.floor(start - half_cell - 0.5) + 1
    stop = math.ceil(end + half_cell - 0.5)
    return slice(min(max(first, 0), length), min(max(stop, 0), length))


class BoxMaskLogits:
    """Per-detection (M, M) mask logits pasted into an (H, W) image where they are read."""

    def __init__(self, masks, boxes, height, width):
        self.masks = np.asarray(masks, np.float32)
        self.boxes = np.asarray(boxes, np.float32)
        self.height, self.width = height, width

    def __len__(self):
        return len(self.masks)

    def window(self, row):
        """(ys, xs) slices where detection ``row``'s paste can be non-zero."""
        x0, y0, x1, y1 = (float(v) for v in self.boxes[row])
        mask_height, mask_width = self.masks.shape[1:]
        return (
            _support(y0, y1, mask_height, self.height),
            _support(x0, x1, mask_width, self.width),
        )

    def crop(self, row, ys, xs):
        x0, y0, x1, y1 = self.boxes[row]
        mask = self.masks[row]
        rows = _interpolation_matrix(y0, y1, mask.shape[0], ys.start, ys.stop)
        cols = _interpolation_matrix(x0, x1, mask.shape[1], xs.start, xs.stop)
        return rows @ mask @ cols.T

    def at(self, rows, ys, xs):
        """Pasted logits of detection ``rows[k]`` at pixel (``ys[k]``, ``xs[k]``)."""
        boxes = self.boxes[rows]
        height, width = self.masks.shape[1:]

        def coordinates(pixels, start, end, size):
            extent = np.maximum(end - start, np.float32(1e-6))
            return (pixels.astype(np.float32) + np.float32(0.5) - start) / extent * np.float32(
                size
            ) - np.float32(0.5)

        pos_y = coordinates(ys, boxes[:, 1], boxes[:, 3], height)
        pos_x = coordinates(xs, boxes[:, 0], boxes[:, 2], width)
        top, left = np.floor(pos_y), np.floor(pos_x)
        frac_y, frac_x = pos_y - top, pos_x - left
        top, left = top.astype(np.int64), left.astype(np.int64)
        value = np.zeros_like(pos_y)
        for dy, weight_y in ((0, 1 - frac_y), (1, frac_y)):
            for dx, weight_x in ((0, 1 - frac_x), (1, frac_x)):
                cy, cx = top + dy, left + dx
                inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
                cell = self.masks[rows, np.clip(cy, 0, height - 1), np.clip(cx, 0, width - 1)]
                value += np.where(inside, weight_y * weight_x * cell, np.float32(0))
        return value


def _box_slices(box, height, width):
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = slice(max(0, int(x0)), min(width, int(-(-x1 // 1))))
    ys = slice(max(0, int(y0)), min(height, int(-(-y1 // 1))))
    return ys, xs


def _authors_box_slices(box, height, width):
    x0, y0, x1, y1 = (float(v) for v in box)
    inclusive_x1, inclusive_y1 = x1 - 1, y1 - 1
    xs = slice(max(int(x0 + 1), 0), min(int(round(inclusive_x1 - 1)) + 1, width))
    ys = slice(max(int(y0 + 1), 0), min(int(round(inclusive_y1 - 1)) + 1, height))
    return ys, xs


def channel_argmax(logits):
    """Per-pixel argmax over (C, H, W), ties to the first channel."""
    return np.argmax(logits, axis=0)


def _best_stuff_logit(sem_logits, stuff_channels):
    best = np.full(sem_logits.shape[1:], -np.inf, dtype=sem_logits.dtype)
    for channel in stuff_channels:
        np.maximum(best, sem_logits[channel], out=best)
    return best


class PanopticFusion:
    """Semantic logits + detections of one image -> (panoptic ids, segments_info).

    Args (the metadata's "fusion" and class tables):
        stuff_channels, thing_channels: semantic channel of each stuff / thing class.
        params: the fusion's settings (``FusionParams``, as the PyTorch model's).
        learned_weights: (things, 4) [w_a, b_a, w_b, b_b] of the learned fusion, or None.
    """

    def __init__(self, *, stuff_channels, thing_channels, params=None, learned_weights=None):
        self.stuff_channels = np.asarray(stuff_channels, np.int64)
        self.thing_channels = np.asarray(thing_channels, np.int64)
        self.params = params or FusionParams()
        self.learned_weights = (
            None if learned_weights is None else np.asarray(learned_weights, np.float32)
        )

    @classmethod
    def from_metadata(cls, metadata):
        params, weights = FusionParams.from_metadata(
            metadata["fusion"], len(metadata["thing_channels"])
        )
        return cls(
            stuff_channels=metadata["stuff_channels"],
            thing_channels=metadata["thing_channels"],
            params=params,
            learned_weights=weights,
        )

    def __call__(self, sem_logits, boxes, scores, classes, mask_logits):
        """Fuse (C, H, W) semantic logits with detections at the same size.

        Returns (panoptic (H, W) int32 ids, segments_info with "id", "category_id" (semantic
        channel), "isthing", "area", and "score", "instance_index" (detection row) for things).
        """
        sem_logits = np.asarray(sem_logits, np.float32)
        height, width = sem_logits.shape[1:]
        scores = np.asarray(scores, np.float32)
        params = self.params
        confident = np.nonzero(scores >= params.score_thresh)[0]
        boxes = np.asarray(boxes, np.float32)[confident]
        classes = np.asarray(classes, np.int64)[confident]
        scores = scores[confident]
        masks = BoxMaskLogits(np.asarray(mask_logits)[confident], boxes, height, width)
        weights = None
        if self.learned_weights is not None:
            weights = self.learned_weights[classes]
        stuff_area = params.stuff_area_at(height, width)

        channels = self.thing_channels[classes]
        # The confident detections by score, highest first (stable: ties keep detection order).
        order = np.argsort(-scores, kind="stable")
        owner, kept = self._overlap_filter(masks, order, height, width)
        fused = _FusedLogits(sem_logits, params.mask_logit_scale, weights)
        if params.pixel_rule in ("argmax", "authors"):
            winner = self._argmax_winner(
                fused, masks, boxes, channels, order, kept, params.pixel_rule == "authors"
            )
        else:
            winner = self._owner_winner(fused, masks, channels, order, owner)
        is_thing_channel = np.zeros(len(sem_logits), dtype=bool)
        is_thing_channel[self.thing_channels] = True
        semantic = channel_argmax(sem_logits)
        void = (winner >= 0) | is_thing_channel[semantic]
        stuff_map = np.where(void, -1, semantic)
        panoptic, segments = self._assemble(
            winner, kept, stuff_map, order, channels, scores, stuff_area
        )
        for segment in segments:
            if segment["isthing"]:
                segment["instance_index"] = int(confident[segment["instance_index"]])
        return panoptic, segments

    def _overlap_filter(self, masks, order, height, width):
        owner = np.full((height, width), -1, dtype=np.int64)
        kept = np.zeros(len(order), dtype=bool)
        for i, row in enumerate(order.tolist()):
            ys, xs = masks.window(row)
            mask = masks.crop(row, ys, xs) > 0
            area = int(mask.sum())
            if area == 0:
                continue
            region = owner[ys, xs]
            free = mask & (region < 0)
            if area - int(free.sum()) > self.params.overlap_thresh * area:
                continue
            region[free] = i
            kept[i] = True
        return owner, kept

    def _argmax_winner(self, fused, masks, boxes, channels, order, kept, authors):
        sem_logits = fused.sem_logits
        height, width = sem_logits.shape[1:]
        best = _best_stuff_logit(sem_logits, self.stuff_channels)
        winner = np.full((height, width), -1, dtype=np.int64)
        box_slices = _authors_box_slices if authors else _box_slices
        for k in np.nonzero(kept)[0].tolist():
            detection = int(order[k])
            ys, xs = masks.window(detection)
            ml_a = masks.crop(detection, ys, xs)
            box_ys, box_xs = box_slices(boxes[detection], height, width)
            inner_ys = slice(max(box_ys.start, ys.start), min(box_ys.stop, ys.stop))
            inner_xs = slice(max(box_xs.start, xs.start), min(box_xs.stop, xs.stop))
            ml_b = np.zeros_like(ml_a)
            channel = int(channels[detection])
            if inner_ys.stop > inner_ys.start and inner_xs.stop > inner_xs.start:
                ml_b[
                    inner_ys.start - ys.start : inner_ys.stop - ys.start,
                    inner_xs.start - xs.start : inner_xs.stop - xs.start,
                ] = sem_logits[channel, inner_ys, inner_xs]
            logits = fused(detection, ml_a, ml_b)
            if not authors:
                logits[ml_a == 0] = -np.inf
            else:
                outside = best < 0
                outside[ys, xs] = False
                best[outside] = 0.0
                winner[outside] = k
            region_best, region_winner = best[ys, xs], winner[ys, xs]
            better = logits > region_best
            region_best[better] = logits[better]
            region_winner[better] = k
        return winner

    def _owner_winner(self, fused, masks, channels, order, owner):
        winner = np.full_like(owner, -1)
        covered = owner >= 0
        if not covered.any():
            return winner
        detection = order[owner[covered]]
        ys, xs = np.nonzero(covered)
        ml_a = masks.at(detection, ys, xs)
        ml_b = fused.sem_logits[channels[detection], ys, xs]
        logits = np.empty_like(ml_a)
        for row in np.unique(detection).tolist():
            mine = detection == row
            logits[mine] = fused(row, ml_a[mine], ml_b[mine])
        best_stuff = _best_stuff_logit(fused.sem_logits[:, ys, xs], self.stuff_channels)
        wins = logits > best_stuff
        winner[ys[wins], xs[wins]] = owner[ys[wins], xs[wins]]
        return winner

    def _assemble(self, winner, kept, stuff_map, order, channels, scores, stuff_area):
        segments = []
        instance_areas = np.bincount(winner[winner >= 0], minlength=len(order))
        instance_ids = np.zeros(len(order) + 1, dtype=np.int32)
        for k in np.nonzero(kept & (instance_areas > 0))[0].tolist():
            detection = int(order[k])
            instance_ids[k + 1] = len(segments) + 1
            segments.append(
                {
                    "id": len(segments) + 1,
                    "category_id": int(channels[detection]),
                    "isthing": True,
                    "score": float(scores[detection]),
                    "area": int(instance_areas[k]),
                    "instance_index": detection,
                }
            )
        stuff_channels = self.stuff_channels
        num_channels = int(stuff_channels.max()) + 1 if len(stuff_channels) else 0
        stuff_areas = np.bincount(stuff_map[stuff_map >= 0], minlength=num_channels)
        stuff_ids = np.zeros(num_channels + 1, dtype=np.int32)
        for channel in stuff_channels.tolist():
            area = int(stuff_areas[channel])
            if area == 0 or area < stuff_area:
                continue
            stuff_ids[channel + 1] = len(segments) + 1
            segments.append(
                {"id": len(segments) + 1, "category_id": channel, "isthing": False, "area": area}
            )
        panoptic = np.where(winner >= 0, instance_ids[winner + 1], stuff_ids[stuff_map + 1])
        return panoptic.astype(np.int32), segments


class _FusedLogits:
    def __init__(self, sem_logits, mask_logit_scale, instance_weights):
        self.sem_logits = sem_logits
        self.scale = np.float32(mask_logit_scale)
        self.weights = instance_weights

    def __call__(self, detection, ml_a, ml_b):
        ml_a = ml_a * self.scale
        if self.weights is not None:
            w = self.weights[detection]
            ml_a, ml_b = w[0] * ml_a + w[1], w[2] * ml_b + w[3]
        return fused_instance_logits(ml_a, ml_b)
