"""Panoptic quality (PQ, SQ, RQ) without panopticapi: vectorised per image, streaming over images.

The definition is COCO's (and cityscapesscripts'): a predicted and a ground-truth segment of the
same category match when IoU > 0.5, where void pixels (ground-truth id 0) are left out of the
union; crowd ground truth is neither matched nor a false negative, and an unmatched prediction
that lies mostly (> 50%) on void or on a crowd region of its category is not a false positive.
Class averages run over classes with at least one TP, FP or FN.
"""

from dataclasses import dataclass

import numpy as np

from .kernels import pair_runs

VOID = 0
UNLISTED = -1  # any id that the segments do not list (reported or ignored by the caller)


class PanopticFormatError(ValueError):
    """Inputs that PQ cannot be computed on; the message names the image."""


def pair_counts(gt_ids, pred_ids):
    """Pixel counts of every (gt id, pred id) pair that occurs in two id maps of one shape:
    three 1-D arrays, sorted by gt id then pred id. Any integer ids.

    A compiled pass finds the runs of equal pairs along the rows (a few dozen per row in
    panoptic maps); only the runs are sorted and summed.
    """
    gt = np.ascontiguousarray(gt_ids).ravel()
    pred = np.ascontiguousarray(pred_ids).ravel()
    if gt.size == 0:
        return gt[:0], pred[:0], np.zeros(0, np.int64)
    run_gt, run_pred = np.empty_like(gt), np.empty_like(pred)
    run_length = np.empty(gt.size, np.int64)
    runs = pair_runs(gt, pred, run_gt, run_pred, run_length)
    return _sum_equal_pairs(run_gt[:runs], run_pred[:runs], run_length[:runs])


def _sum_equal_pairs(gt, pred, counts):
    order = np.lexsort((pred, gt))
    gt, pred, counts = gt[order], pred[order], counts[order]
    first = np.ones(len(gt), bool)
    first[1:] = (gt[1:] != gt[:-1]) | (pred[1:] != pred[:-1])
    starts = np.flatnonzero(first)
    return gt[starts], pred[starts], np.add.reduceat(counts, starts)


def intersections(gt_ids, pred_ids, gt_listed=(), pred_listed=()):
    """Pixel counts of every (gt id, pred id) pair that occurs: three 1-D int64 arrays.

    Ids not in ``*_listed`` (nor VOID) are reported as UNLISTED.
    """
    gt, pred, counts = pair_counts(gt_ids, pred_ids)
    gt = _label_unlisted(gt.astype(np.int64), gt_listed)
    pred = _label_unlisted(pred.astype(np.int64), pred_listed)
    return _sum_equal_pairs(gt, pred, counts)


def _label_unlisted(ids, listed):
    known = np.isin(ids, np.asarray(listed, np.int64)) | (ids == VOID)
    return np.where(known, ids, UNLISTED)


@dataclass
class SegmentTable:
    """Segments of one image as arrays: id, category index, crowd flag."""

    ids: np.ndarray
    categories: np.ndarray
    crowd: np.ndarray

    @classmethod
    def from_segments(cls, segments, category_index, image_name, what):
        ids, categories, crowd = [], [], []
        for s in segments:
            if s["category_id"] not in category_index:
                raise PanopticFormatError(
                    f"{image_name}: {what} segment {s['id']} has unknown category_id "
                    f"{s['category_id']}"
                )
            ids.append(s["id"])
            categories.append(category_index[s["category_id"]])
            crowd.append(bool(s.get("iscrowd", 0)))
        return cls(
            np.asarray(ids, np.int64), np.asarray(categories, np.int64), np.asarray(crowd, bool)
        )


def _check_prediction_ids(pred_ids, pred, pi, image_name):
    """The prediction's PNG ids must be exactly its segments_info's (id 0 is void)."""
    if (pi == UNLISTED).any():
        unknown = np.setdiff1d(np.unique(pred_ids), np.append(pred.ids, VOID))
        raise PanopticFormatError(
            f"{image_name}: predicted segment ids {unknown[:10].tolist()} are in the PNG but "
            "not in its segments_info"
        )
    absent = np.setdiff1d(pred.ids, np.unique(pi[pi != VOID]))  # only listed ids remain
    if len(absent):
        raise PanopticFormatError(
            f"{image_name}: predicted segments {absent[:10].tolist()} are listed but not in "
            "the PNG"
        )


class _Overlaps:
    """The (gt id, pred id, pixels) runs of one image as table rows, and per-segment areas.

    ``gt_row``/``pred_row``: row of each run's segment in its table, -1 for unlisted ids (void).
    ``pred_area``/``gt_area``: pixels of each segment; ``void_of_pred``: its pixels on gt void.
    """

    def __init__(self, gt, pred, gi, pi, inter):
        self.inter = inter
        self.gt_row = _rows(gt.ids, gi)
        self.pred_row = _rows(pred.ids, pi)
        self.pred_area = _sum_by_row(self.pred_row, inter, len(pred.ids))
        self.gt_area = _sum_by_row(self.gt_row, inter, len(gt.ids))
        on_void = (gi == VOID) & (self.pred_row >= 0)
        self.void_of_pred = np.zeros(len(pred.ids), np.int64)
        np.add.at(self.void_of_pred, self.pred_row[on_void], inter[on_void])


def _sum_by_row(rows, values, length):
    total = np.zeros(length, np.int64)
    listed = rows >= 0
    np.add.at(total, rows[listed], values[listed])
    return total


class PQAccumulator:
    """Per-category IoU sums and TP/FP/FN counts, added up image by image (constant memory).

    Categories are given once, as a list of {"id", "isthing", "name"?}; segments refer to them
    by ``category_id``.
    """

    def __init__(self, categories):
        self.categories = list(categories)
        self.category_index = {c["id"]: i for i, c in enumerate(self.categories)}
        self.isthing = np.asarray([bool(c.get("isthing")) for c in self.categories])
        self.reset()

    def reset(self):
        n = len(self.categories)
        self.iou = np.zeros(n, np.float64)
        self.tp = np.zeros(n, np.int64)
        self.fp = np.zeros(n, np.int64)
        self.fn = np.zeros(n, np.int64)

    def state(self):
        return np.stack([self.iou, self.tp, self.fp, self.fn])

    def add_state(self, state):
        self.iou += state[0]
        self.tp += state[1].astype(np.int64)
        self.fp += state[2].astype(np.int64)
        self.fn += state[3].astype(np.int64)

    def add(self, gt_ids, gt_segments, pred_ids, pred_segments, image_name="image"):
        """Add one image: id maps (H, W) and their segments_info lists."""
        if gt_ids.shape != pred_ids.shape:
            raise PanopticFormatError(
                f"{image_name}: prediction is {pred_ids.shape[1]}x{pred_ids.shape[0]}, "
                f"ground truth {gt_ids.shape[1]}x{gt_ids.shape[0]}"
            )
        gt = SegmentTable.from_segments(gt_segments, self.category_index, image_name, "gt")
        pred = SegmentTable.from_segments(pred_segments, self.category_index, image_name, "pred")
        gi, pi, inter = intersections(gt_ids, pred_ids, gt.ids, pred.ids)
        _check_prediction_ids(pred_ids, pred, pi, image_name)
        overlaps = _Overlaps(gt, pred, gi, pi, inter)
        gt_matched, pred_matched = self._count_matches(gt, pred, overlaps)
        np.add.at(self.fn, gt.categories[~gt_matched & ~gt.crowd], 1)
        self._count_false_positives(gt, pred, overlaps, gt_matched, pred_matched)

    def _count_matches(self, gt, pred, overlaps):
        """True positives: same category, non-crowd gt, IoU > 0.5 (void excluded from the
        union). Returns which gt and which predicted segments matched."""
        o = overlaps
        candidate = (o.gt_row >= 0) & (o.pred_row >= 0)
        g, p, n = o.gt_row[candidate], o.pred_row[candidate], o.inter[candidate]
        same = (gt.categories[g] == pred.categories[p]) & ~gt.crowd[g]
        g, p, n = g[same], p[same], n[same]
        union = o.pred_area[p] + o.gt_area[g] - n - o.void_of_pred[p]
        iou = n / union
        match = iou > 0.5
        np.add.at(self.tp, gt.categories[g[match]], 1)
        np.add.at(self.iou, gt.categories[g[match]], iou[match])
        gt_matched = np.zeros(len(gt.ids), bool)
        gt_matched[g[match]] = True
        pred_matched = np.zeros(len(pred.ids), bool)
        pred_matched[p[match]] = True
        return gt_matched, pred_matched

    def _count_false_positives(self, gt, pred, overlaps, gt_matched, pred_matched):
        """Unmatched predictions, except those lying mostly on void or on their category's
        crowd region. As in the reference, the last crowd segment of a category counts."""
        o = overlaps
        crowd_of_category = {}
        for row in np.flatnonzero(gt.crowd & ~gt_matched):
            crowd_of_category[int(gt.categories[row])] = row
        ignored = o.void_of_pred.copy()
        if crowd_of_category:
            crowd_row = np.full(len(self.categories), -1)
            for category, row in crowd_of_category.items():
                crowd_row[category] = row
            on_crowd = (o.gt_row >= 0) & (o.pred_row >= 0)
            on_crowd &= crowd_row[pred.categories[np.maximum(o.pred_row, 0)]] == o.gt_row
            np.add.at(ignored, o.pred_row[on_crowd], o.inter[on_crowd])
        unmatched = np.flatnonzero(~pred_matched)
        false_positive = unmatched[ignored[unmatched] / o.pred_area[unmatched] <= 0.5]
        np.add.at(self.fp, pred.categories[false_positive], 1)

    def results(self):
        """{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {category id: {pq, sq, rq}}}.

        Values are fractions (as cityscapesscripts writes them).
        """
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        seen = denominator > 0
        safe = np.where(seen, denominator, 1)
        pq = np.where(seen, self.iou / safe, 0.0)
        sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
        rq = np.where(seen, self.tp / safe, 0.0)
        results = {}
        for name, selected in (
            ("All", np.ones_like(seen)),
            ("Things", self.isthing),
            ("Stuff", ~self.isthing),
        ):
            rows = seen & selected
            n = int(rows.sum())
            results[name] = {
                "pq": float(pq[rows].sum() / n) if n else 0.0,
                "sq": float(sq[rows].sum() / n) if n else 0.0,
                "rq": float(rq[rows].sum() / n) if n else 0.0,
                "n": n,
            }
        results["per_class"] = {
            c["id"]: {"pq": float(pq[i]), "sq": float(sq[i]), "rq": float(rq[i])}
            for i, c in enumerate(self.categories)
        }
        return results


def _rows(table_ids, ids):
    """Index of each of ``ids`` in ``table_ids`` (unique), -1 where absent."""
    if len(table_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    order = np.argsort(table_ids)
    sorted_ids = table_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, order[pos], -1)


def format_table(results, categories):
    """Text table in cityscapesscripts' layout (PQ/SQ/RQ in percent)."""
    lines = [f"{'Category':14s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}"]
    for c in categories:
        r = results["per_class"][c["id"]]
        lines.append(
            f"{c.get('name', c['id'])!s:14.14s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  "
            f"{100 * r['rq']:5.1f}"
        )
    lines.append("-" * 41)
    lines.append(f"{'':14s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}")
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(
            f"{name:14s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} "
            f"{r['n']:5d}"
        )
    return "\n".join(lines)
