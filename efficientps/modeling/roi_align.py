"""ROIAlign as one ``embedding_bag`` call: torchvision's numbers, a much faster CPU backward.

torchvision's CPU ``roi_align`` backward is a single-threaded scalar loop; with 512 ROIs of 256
channels it takes ~0.6-0.9 s per FPN level here, more than the whole backbone backward of the
CPU demo. Every output bin of ROIAlign is a weighted sum of feature-map pixels (bilinear corners
of its sampling points), so with the features in channels-last rows it is exactly
``F.embedding_bag(indices, rows, per_sample_weights, mode="sum")``, whose forward and backward
are vectorised and threaded. Sampling points, clamping and the adaptive sampling ratio follow
torchvision's kernel, so outputs agree to float rounding (tested).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align as torchvision_roi_align


def _axis_samples(start, end, bins, grid, size, max_grid):
    """Bilinear taps of one axis: indices and weights shaped (R, bins, max_grid * 2).

    ``grid`` (R,) is each ROI's number of sampling points per bin on this axis; entries past it
    get weight 0 (they pad ROIs whose adaptive ratio is below the largest in the batch).
    """
    dtype = start.dtype
    bin_size = (end - start) / bins
    bin_index = torch.arange(bins, device=start.device, dtype=dtype)
    sample_index = torch.arange(max_grid, device=start.device, dtype=dtype)
    grid_f = grid.to(dtype).clamp(min=1)
    # torchvision: start + p * bin_size + (i + 0.5) * bin_size / grid
    coord = (
        start[:, None, None]
        + bin_index[None, :, None] * bin_size[:, None, None]
        + (sample_index[None, None, :] + 0.5) * (bin_size / grid_f)[:, None, None]
    )
    used = sample_index[None, None, :] < grid.to(dtype)[:, None, None]
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    coord = torch.where(at_edge, low, coord)
    high = torch.where(at_edge, low, low + 1)
    frac = coord - low
    weights = torch.stack([1 - frac, frac], dim=-1) * (used & inside)[..., None]
    indices = torch.stack([low, high], dim=-1).long()
    rois = start.shape[0]
    return indices.reshape(rois, bins, -1), weights.reshape(rois, bins, -1)


def roi_align_embedding_bag(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Same contract as ``torchvision.ops.roi_align`` with rois (R, 5) = (batch index, box)."""
    out_h, out_w = output_size
    batch, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features.new_zeros(0, channels, out_h, out_w)
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x0, y0, x1, y1 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x1 - x0, y1 - y0
    if not aligned:  # torchvision's legacy mode forces ROIs to be at least 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), sampling_ratio, device=rois.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / out_h).long()
        grid_w = torch.ceil(roi_w / out_w).long()
    max_h = max(int(grid_h.max()), 1)
    max_w = max(int(grid_w.max()), 1)
    rows, row_w = _axis_samples(y0, y0 + roi_h, out_h, grid_h, height, max_h)
    cols, col_w = _axis_samples(x0, x0 + roi_w, out_w, grid_w, width, max_w)
    count = (grid_h * grid_w).clamp(min=1).to(features.dtype)

    image = rois[:, 0].long()
    # (R, out_h, out_w, taps_h, taps_w): flat row of (image, y, x) in channels-last features.
    flat = (image[:, None, None, None, None] * height + rows[:, :, None, :, None]) * width + cols[
        :, None, :, None, :
    ]
    weights = (
        row_w[:, :, None, :, None] * col_w[:, None, :, None, :] / count[:, None, None, None, None]
    )
    taps = flat.shape[-1] * flat.shape[-2]
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    pooled = F.embedding_bag(
        flat.reshape(-1, taps), table, per_sample_weights=weights.reshape(-1, taps), mode="sum"
    )
    return pooled.view(num_rois, out_h, out_w, channels).permute(0, 3, 1, 2).contiguous()


class FastCPUROIAlign(nn.Module):
    """Drop-in for ``detectron2.layers.ROIAlign``: the embedding-bag path on CPU, torchvision's
    kernel elsewhere (its CUDA kernel is already fast)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
        super().__init__()
        self.output_size = tuple(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features, rois):
        if features.device.type == "cpu":
            return roi_align_embedding_bag(
                features,
                rois,
                self.output_size,
                self.spatial_scale,
                self.sampling_ratio,
                self.aligned,
            )
        return torchvision_roi_align(
            features,
            rois.to(features.dtype),
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )

    def extra_repr(self):
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


def use_fast_cpu_roi_align(pooler):
    """Swap a detectron2 ``ROIPooler``'s ROIAlign levels for ``FastCPUROIAlign`` in place."""
    if pooler is None:
        return pooler
    levels = []
    for level in pooler.level_poolers:
        if type(level).__name__ != "ROIAlign":  # ROIPool / rotated: keep detectron2's
            return pooler
        levels.append(
            FastCPUROIAlign(
                level.output_size, level.spatial_scale, level.sampling_ratio, level.aligned
            )
        )
    pooler.level_poolers = nn.ModuleList(levels)
    return pooler
