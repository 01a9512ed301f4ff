"""Compiled per-pixel loops of the evaluators: PNG unfiltering into ids, pair run counting,
id relabelling and the semantic confusion matrix.

They run without the GIL (numba ``nogil``), so the decoding threads and the counting thread of
the offline evaluator use every core. Compiled code is cached next to this file (or in numba's
user-wide cache when that is not writable), so only the first run pays the compilation (about
3 s).

A COCO-panoptic id is R + 256 G + 256^2 B, and PNG filters act on each byte from the same byte
of the neighbours, so the rows of ids themselves serve as the unfiltered previous row, and the
alpha byte of RGBA files is never needed.
"""

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _paeth(a, b, c):
    """The PNG Paeth predictor of one byte from its left, upper and upper-left bytes."""
    a = np.int32(a)  # signed: the distances below
    b = np.int32(b)
    c = np.int32(c)
    pa = abs(b - c)  # |p - a| for p = a + b - c
    pb = abs(a - c)
    pc = abs(a + b - c - c)
    nearest_bc = b if pb <= pc else c
    return np.uint32(a if (pa <= pb) & (pa <= pc) else nearest_bc)


@njit(nogil=True, cache=True)
def unfilter_png_ids(raw, height, width, channels, ids):
    """Write the ids of an inflated 8-bit RGB/RGBA PNG (``raw``: one filter byte + the row's
    bytes per row) into ``ids`` (height, width) uint32. Returns -1, or the first row whose
    filter byte is not 0-4."""
    # Inlined with a constant pixel size, the byte offsets are cheaper (measured ~30%).
    if channels == 3:
        return _unfilter(raw, height, width, 3, ids)
    return _unfilter(raw, height, width, 4, ids)


@njit(nogil=True, cache=True, inline="always")
def _unfilter(raw, height, width, channels, ids):
    """unfilter_png_ids for one pixel size.

    The filters that read the left neighbour keep its R, G, B in three uint32 scalars: three
    short dependency chains in registers instead of one through memory.
    """
    row_bytes = width * channels + 1
    byte = np.uint32(0xFF)
    for y in range(height):
        kind = raw[y * row_bytes]
        line = raw[y * row_bytes + 1 : (y + 1) * row_bytes]
        row = ids[y]
        up_row = ids[y - 1] if y > 0 else ids[y]  # not read on the first row
        r = g = b = np.uint32(0)  # reconstructed bytes of the left neighbour
        if kind == 0 or (kind == 2 and y == 0):  # the row above the first is zeros
            for x in range(width):
                o = x * channels
                r, g, b = line[o], line[o + 1], line[o + 2]
                row[x] = r | (np.uint32(g) << 8) | (np.uint32(b) << 16)
        elif kind == 1:
            for x in range(width):
                o = x * channels
                r = (r + line[o]) & byte
                g = (g + line[o + 1]) & byte
                b = (b + line[o + 2]) & byte
                row[x] = r | (g << 8) | (b << 16)
        elif kind == 2:
            for x in range(width):
                o = x * channels
                up = up_row[x]
                r = (line[o] + up) & byte
                g = (line[o + 1] + (up >> 8)) & byte
                b = (line[o + 2] + (up >> 16)) & byte
                row[x] = r | (g << 8) | (b << 16)
        elif kind == 3:
            for x in range(width):
                o = x * channels
                up = up_row[x] if y > 0 else np.uint32(0)
                r = (line[o] + ((r + (up & byte)) >> 1)) & byte
                g = (line[o + 1] + ((g + ((up >> 8) & byte)) >> 1)) & byte
                b = (line[o + 2] + ((b + (up >> 16)) >> 1)) & byte
                row[x] = r | (g << 8) | (b << 16)
        elif kind == 4:
            up_left = np.uint32(0)
            for x in range(width):
                o = x * channels
                up = up_row[x] if y > 0 else np.uint32(0)
                if up == up_left:  # Paeth picks the left byte when up == up-left: flat areas
                    r = (line[o] + r) & byte
                    g = (line[o + 1] + g) & byte
                    b = (line[o + 2] + b) & byte
                else:
                    r = (line[o] + _paeth(r, up & byte, up_left & byte)) & byte
                    g = (line[o + 1] + _paeth(g, (up >> 8) & byte, (up_left >> 8) & byte)) & byte
                    b = (line[o + 2] + _paeth(b, up >> 16, up_left >> 16)) & byte
                row[x] = r | (g << 8) | (b << 16)
                up_left = up
        else:
            return y
    return -1


@njit(nogil=True, cache=True)
def pair_runs(gt, pred, run_gt, run_pred, run_length):
    """Runs of equal (gt, pred) pairs along two flat id maps of the same length (> 0), written
    into the run_* arrays (as long as the maps); returns the number of runs.

    Segments are wide, so a 2048-pixel row holds a few dozen runs: summing the runs afterwards
    costs far less than counting every pixel into a table.
    """
    runs = 0
    current_gt = gt[0]
    current_pred = pred[0]
    length = 0
    for i in range(gt.size):
        g = gt[i]
        p = pred[i]
        if g == current_gt and p == current_pred:
            length += 1
        else:
            run_gt[runs] = current_gt
            run_pred[runs] = current_pred
            run_length[runs] = length
            runs += 1
            current_gt = g
            current_pred = p
            length = 1
    run_gt[runs] = current_gt
    run_pred[runs] = current_pred
    run_length[runs] = length
    return runs + 1


@njit(nogil=True, cache=True)
def relabel(ids, keys, values, default, out):
    """``out[i] = values[j]`` where ``keys[j] == ids[i]`` (``keys`` sorted), else ``default``.

    Flat arrays. Neighbouring pixels mostly share an id, so the previous answer is reused and
    the binary search runs only where the id changes.
    """
    previous_id = ids[0] if ids.size else 0
    previous_value = _lookup(keys, values, default, previous_id)
    for i in range(ids.size):
        current = ids[i]
        if current != previous_id:
            previous_id = current
            previous_value = _lookup(keys, values, default, current)
        out[i] = previous_value


@njit(nogil=True, cache=True, inline="always")
def _lookup(keys, values, default, key):
    j = np.searchsorted(keys, key)
    return values[j] if j < keys.size and keys[j] == key else default


@njit(nogil=True, cache=True)
def add_confusion(gt, pred, ignore_label, confusion):
    """``confusion[g, p] += 1`` for every pixel whose ground truth ``g`` is not the ignore
    label (flat arrays). Returns the number of pixels with a class outside the matrix, which
    are not counted."""
    classes = confusion.shape[0]
    outside = 0
    for i in range(gt.size):
        g = gt[i]
        if g == ignore_label:
            continue
        p = pred[i]
        if 0 <= g < classes and 0 <= p < classes:
            confusion[g, p] += 1
        else:
            outside += 1
    return outside
