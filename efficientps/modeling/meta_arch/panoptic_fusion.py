"""EfficientPS' panoptic fusion (paper Sec. 3.5) as pure functions: tensors in, panoptic map out.

No config access: thresholds are arguments. Semantic label 0 is an ordinary class here (on
Cityscapes it is road); which channels are stuff and which are things comes from the caller's
explicit tables, never from a convention on ids.
"""

import torch

from efficientps_runtime.fusion_params import PIXEL_RULES

from ...channel_argmax import channel_argmax


def fused_instance_logits(ml_a, ml_b):
    """FL = (sigmoid(ML_A) + sigmoid(ML_B)) * (ML_A + ML_B): agreement amplifies."""
    return (ml_a.sigmoid() + ml_b.sigmoid()) * (ml_a + ml_b)


def _box_slices(box, height, width):
    """The pixels a box touches; ``box`` a host list (x0, y0, x1, y1)."""
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


class _DenseMaskLogits:
    """An (N, H, W) tensor behind the ``window``/``crop``/``at`` interface of ``BoxMaskLogits``."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)

    def __len__(self):
        return len(self.tensor)

    def window(self, row):
        """The bounding slices of the non-zero logits of detection ``row``."""
        ys, xs = torch.nonzero(self.tensor[row], as_tuple=True)
        if len(ys) == 0:
            return slice(0, 0), slice(0, 0)
        return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)

    def crop(self, row, ys, xs):
        return self.tensor[row, ys, xs]

    def at(self, rows, ys, xs):
        return self.tensor[rows, ys, xs]


def _mask_source(mask_logits):
    """``window``/``crop``/``at`` access to (N, H, W) tensors; BoxMaskLogits as it is."""
    return _DenseMaskLogits(mask_logits) if isinstance(mask_logits, torch.Tensor) else mask_logits


def checked_pixel_rule(pixel_rule, name="pixel_rule"):
    """``pixel_rule`` if it is one of PIXEL_RULES, else an error naming ``name``."""
    if pixel_rule not in PIXEL_RULES:
        raise ValueError(f"{name}={pixel_rule!r}; expected one of {PIXEL_RULES}")
    return pixel_rule


def overlap_filter(mask_logits, overlap_thresh, order=None):
    """Greedy overlap filter over detections sorted by confidence (highest first).

    An instance whose binary mask (sigmoid > 0.5, i.e. logit > 0) has more than
    ``overlap_thresh`` of its pixels already taken is dropped; otherwise its free pixels become
    taken. ``mask_logits``: (N, H, W) tensor or ``BoxMaskLogits``. ``order`` (K,) visits
    detection ``order[k]`` as instance k; None is 0..N-1.

    Each decision stays on the device (no host read per detection: on a GPU each would wait
    for the device); the windows come from the boxes, read once.

    Returns:
        owner: (H, W) int64 index k of the instance that took each pixel, -1 for none.
        kept: (K,) bool.
    """
    source = _mask_source(mask_logits)
    _, height, width = source.shape
    order = torch.arange(len(source)) if order is None else order
    owner = torch.full((height, width), -1, dtype=torch.int64, device=order.device)
    kept = torch.zeros(len(order), dtype=torch.bool, device=order.device)
    for i, row in enumerate(order.tolist()):
        ys, xs = source.window(row)  # the paste is 0 elsewhere: sigmoid 0.5, not > 0.5
        if ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        mask = source.crop(row, ys, xs) > 0
        region = owner[ys, xs]  # a view: written in place
        free = mask & (region < 0)
        area = mask.sum()
        keep = (area > 0) & (area - free.sum() <= overlap_thresh * area)
        region.copy_(torch.where(free & keep, i, region))
        kept[i] = keep
    return owner, kept


def fuse_panoptic(
    sem_logits,
    mask_logits,
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
    instance_weights=None,
    pixel_rule="argmax",
):
    """Fuse semantic logits and instance mask logits into a panoptic map (paper Sec. 3.5).

    Args:
        sem_logits: (C, H, W) semantic logits over all classes.
        mask_logits: (N, H, W) full-image pasted mask logits of the detections (0 where the
            paste does not reach), or a ``BoxMaskLogits`` giving the same values lazily.
        boxes: (N, 4) boxes (x0, y0, x1, y1) in pixels. classes: (N,) thing indices.
        scores: (N,) confidences.
        stuff_channels / thing_channels: semantic channel of stuff class k / thing class j.
        score_thresh: instances below it are ignored. overlap_thresh: see ``overlap_filter``.
        stuff_area: stuff segments with fewer pixels become void.
        mask_logit_scale: ML_A multiplier (the authors' code uses 4; the paper 1).
        instance_weights: optional (N, 4) per-detection [w_a, b_a, w_b, b_b] applied as
            w * ML + b to ML_A and ML_B (the learned fusion); None is the paper's fusion.
        pixel_rule: "argmax" (the paper): every kept instance's fused logits compete with the
            stuff logits wherever its paste is non-zero; "owner": an instance competes only
            on the pixels the overlap filter gave it; "authors": as their code, "argmax" with
            FL = 0 (not out of the vote) where the paste is 0 and their ML_B box window.

    Returns:
        panoptic: (H, W) int32, 0 = void, segment ids from 1.
        segments_info: list of {"id", "category_id" (semantic channel), "isthing", "area",
            and "score", "instance_index" (row in the inputs) for things}.
    """
    checked_pixel_rule(pixel_rule)
    device = sem_logits.device
    stuff_channels = torch.as_tensor(list(stuff_channels), dtype=torch.int64, device=device)
    thing_channels = torch.as_tensor(list(thing_channels), dtype=torch.int64, device=device)
    instances = _FusionInstances(
        _mask_source(mask_logits), boxes, thing_channels[classes], scores, score_thresh
    )
    stuff_list = stuff_channels.tolist()
    # 1.-2. Confident instances, highest score first; the overlap filter drops instances.
    owner, kept = overlap_filter(instances.masks, overlap_thresh, order=instances.order)
    # 3.-5. Which kept instance (if any) wins each pixel over the stuff logits.
    fused = _FusedLogits(sem_logits, mask_logit_scale, instance_weights)
    if pixel_rule in ("argmax", "authors"):
        winner = _argmax_winner(fused, instances, kept, stuff_list, authors=pixel_rule == "authors")
    else:
        winner = _owner_winner(fused, instances, owner, stuff_list)
    # 6.-7. Stuff where no instance won and the semantic class is not a thing; assemble.
    stuff_map = _stuff_map(sem_logits, winner >= 0, thing_channels)
    return _assemble(winner, kept, stuff_map, instances, stuff_list, stuff_area)


class _FusionInstances:
    """The detections' mask source, boxes, semantic channels and scores; ``order`` lists the
    confident ones by score, highest first (stable: ties keep detection order).

    ``host`` holds what the per-detection loops read (order, boxes, channels, scores) as
    Python lists, copied from the device once instead of once per detection.
    """

    def __init__(self, masks, boxes, channels, scores, score_thresh):
        self.masks, self.boxes, self.channels, self.scores = masks, boxes, channels, scores
        candidates = torch.nonzero(scores >= score_thresh).flatten()
        self.order = candidates[torch.sort(scores[candidates], descending=True, stable=True)[1]]
        self._host = None

    @property
    def host(self):
        if self._host is None:
            self._host = _HostDetections(self.order, self.boxes, self.channels, self.scores)
        return self._host


class _HostDetections:
    def __init__(self, order, boxes, channels, scores):
        values = torch.cat(
            [order.double(), boxes.double().flatten(), channels.double(), scores.double()]
        ).tolist()
        n, k = len(channels), len(order)
        self.order = [int(v) for v in values[:k]]
        flat_boxes = values[k : k + 4 * n]
        self.boxes = [flat_boxes[4 * i : 4 * i + 4] for i in range(n)]
        self.channels = [int(v) for v in values[k + 4 * n : k + 5 * n]]
        self.scores = values[k + 5 * n :]


class _FusedLogits:
    """FL of one detection (an int) or of per-pixel detections (a tensor of rows) from ML_A
    and the semantic logits (ML_B)."""

    def __init__(self, sem_logits, mask_logit_scale, instance_weights):
        self.sem_logits = sem_logits
        self.scale = mask_logit_scale
        self.weights = instance_weights

    def __call__(self, detection, ml_a, ml_b):
        ml_a = ml_a * self.scale
        if self.weights is not None:
            w = self.weights[detection]
            w = w.T if w.dim() == 2 else w  # (4, pixels) for per-pixel rows
            ml_a, ml_b = w[0] * ml_a + w[1], w[2] * ml_b + w[3]
        return fused_instance_logits(ml_a, ml_b)


def _best_stuff_logit(sem_logits, stuff_channels):
    """Running maximum over the stuff channels (a list) of (C, ...) logits (no copy of them)."""
    best = torch.full_like(sem_logits[0], float("-inf"))
    for channel in stuff_channels:
        torch.maximum(best, sem_logits[channel], out=best)
    return best


def _argmax_winner(fused, instances, kept, stuff_channels, authors=False):
    """argmax over [stuff logits, FL_1..FL_K] per pixel, as a running maximum.

    Stuff channels come first and instances follow in score order, so ties go to stuff, then
    to the higher-scoring instance. Returns (H, W) int64: the winning instance k, or -1.
    ``authors``: an instance's FL is 0 where its paste is 0 (so the first kept instance takes
    every pixel whose stuff logits are all negative), and ML_B is read in their box window.
    """
    sem_logits = fused.sem_logits
    height, width = sem_logits.shape[-2:]
    best = _best_stuff_logit(sem_logits, stuff_channels)
    winner = torch.full((height, width), -1, dtype=torch.int64, device=sem_logits.device)
    box_slices = _authors_box_slices if authors else _box_slices
    host = instances.host
    for k in torch.nonzero(kept).flatten().tolist():
        detection = host.order[k]
        ys, xs = instances.masks.window(detection)
        ml_a = instances.masks.crop(detection, ys, xs)
        # ML_B: the class's semantic logits inside the box (pixels it touches), 0 elsewhere.
        box_ys, box_xs = box_slices(host.boxes[detection], height, width)
        inner_ys = slice(max(box_ys.start, ys.start), min(box_ys.stop, ys.stop))
        inner_xs = slice(max(box_xs.start, xs.start), min(box_xs.stop, xs.stop))
        ml_b = torch.zeros_like(ml_a)
        channel = host.channels[detection]
        ml_b[
            inner_ys.start - ys.start : inner_ys.stop - ys.start,
            inner_xs.start - xs.start : inner_xs.stop - xs.start,
        ] = sem_logits[channel, inner_ys, inner_xs]
        logits = fused(detection, ml_a, ml_b)
        if not authors:
            # Where the paste is 0 the instance does not compete (not FL = 0, which would win
            # every pixel whose stuff logits are all negative).
            logits.masked_fill_(ml_a == 0, float("-inf"))
        else:
            # Outside its paste window the instance's FL is 0: it wins where all is negative.
            outside = best < 0
            outside[ys, xs] = False
            best.masked_fill_(outside, 0.0)
            winner.masked_fill_(outside, k)
        # Views of the running maximum, updated in place without boolean indexing (which
        # reads its count on the host).
        region_best, region_winner = best[ys, xs], winner[ys, xs]
        better = logits > region_best
        region_best.copy_(torch.where(better, logits, region_best))
        region_winner.masked_fill_(better, k)
    return winner


def _owner_winner(fused, instances, owner, stuff_channels):
    """Each pixel's owner (from the overlap filter) against the best stuff logit, if any."""
    winner = torch.full_like(owner, -1)
    ys, xs = torch.nonzero(owner >= 0, as_tuple=True)
    if len(ys) == 0:
        return winner
    detection = instances.order[owner[ys, xs]]
    ml_a = instances.masks.at(detection, ys, xs)
    # Owned pixels are where ML_A > 0; ML_B is read there (inside the box or its paste margin).
    ml_b = fused.sem_logits[instances.channels[detection], ys, xs]
    logits = fused(detection, ml_a, ml_b)
    best_stuff = _best_stuff_logit(fused.sem_logits[:, ys, xs], stuff_channels)
    wins = logits > best_stuff  # stuff first in the stack: ties go to stuff
    winner[ys, xs] = torch.where(wins, owner[ys, xs], winner[ys, xs])
    return winner


def _stuff_map(sem_logits, instance_pixels, thing_channels):
    """Semantic argmax where no instance won and the class is stuff; -1 elsewhere."""
    is_thing_channel = torch.zeros(len(sem_logits), dtype=torch.bool, device=sem_logits.device)
    is_thing_channel[thing_channels] = True
    semantic = channel_argmax(sem_logits)
    void = instance_pixels | is_thing_channel[semantic]
    return torch.where(void, torch.full_like(semantic, -1), semantic)


def _assemble(winner, kept, stuff_map, instances, stuff_channels, stuff_area):
    """Panoptic ids and segments_info through lookup tables (one gather per map).

    Thing pixels without a surviving instance stay void (0); stuff classes smaller than
    ``stuff_area`` become void. The areas are counted on the device and read once.
    """
    device = winner.device
    num_instances = len(instances.order)
    num_channels = max(stuff_channels) + 1 if stuff_channels else 0
    # Shifted by one so that -1 (none) is bin 0: no boolean selection of the pixels first.
    instance_areas = torch.bincount(winner.flatten() + 1, minlength=num_instances + 1)[1:]
    stuff_areas = torch.bincount(stuff_map.flatten() + 1, minlength=num_channels + 1)[1:]
    counts = torch.cat([kept.long(), instance_areas[:num_instances], stuff_areas[:num_channels]])
    counts = counts.tolist()
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
    instance_ids = torch.tensor(instance_ids, dtype=torch.int32, device=device)
    stuff_ids = torch.tensor(stuff_ids, dtype=torch.int32, device=device)
    panoptic = torch.where(winner >= 0, instance_ids[winner + 1], stuff_ids[stuff_map + 1])
    return panoptic, segments_info
