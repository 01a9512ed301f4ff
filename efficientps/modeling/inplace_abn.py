"""In-place activated BatchNorm (iABN, Rota Bulo et al. 2018): BN + LeakyReLU that keeps only
its output for backward.

EfficientPS trains with iABN. BN followed by an activation normally keeps two full-size tensors
per layer for backward: the BN input and the activation output. iABN keeps the output alone and
recovers what backward needs by inverting the activation and the affine map, which roughly
halves the activation memory of conv -> BN -> LeakyReLU stacks. The function is the same as
BatchNorm2d + LeakyReLU (or + nothing), and so are the parameters and buffers: checkpoints load
either way, and ``convert_to_inplace_abn`` swaps it into a built model.

Inverting the affine map divides by the BN weight; channels whose weight is smaller than
``SMALL_WEIGHT`` in magnitude keep their input instead (the original iABN changes the
parameterisation to |w| + eps for this; here ImageNet weights with negative or tiny gammas load
unchanged). ``sync=True`` reduces the statistics over the default process group (the paper's
iABN-sync), on CPU (gloo) as on GPU.
"""

import torch
import torch.distributed as dist
from detectron2.layers import Conv2d, NaiveSyncBatchNorm
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

SMALL_WEIGHT = 1e-2
_DIMS = (0, 2, 3)


def _per_channel(t):
    return t.reshape(1, -1, 1, 1)


def _synchronised(sync):
    return sync and comm.get_world_size() > 1


def _statistics_dtype(weight):
    """float32 statistics for float16/bfloat16 activations (autocast), float64 for float64."""
    return torch.promote_types(weight.dtype, torch.float32)


def _local_moments(x, dtype):
    """Per-channel (mean, sum of squared deviations) of ``x`` in ``dtype``, two-pass.

    Two passes in ``dtype`` instead of sums of x and x^2 in x's dtype: in float16 the sum of
    squares of a 512x1024 map overflows, and E[x^2] - E[x]^2 cancels when |mean| >> std.
    """
    if x.numel() == 0:
        zeros = torch.zeros(x.shape[1], dtype=dtype, device=x.device)
        return zeros, zeros.clone()
    values = x.to(dtype)
    var, mean = torch.var_mean(values, dim=_DIMS, correction=0)
    return mean, var * (x.numel() // x.shape[1])


def _global_moments(x, dtype):
    """(count, mean, biased variance) over every process, without a host synchronisation.

    Each process contributes (count, mean, M2); they are merged exactly as Chan et al.'s
    parallel variance (the merge torch's SyncBatchNorm does with Welford statistics), in float64
    so that counts stay exact (a float16 count is inf past 65504 pixels). A process with no
    pixels (a mask head without regions) contributes count 0 and still joins the collective.
    """
    channels = x.shape[1]
    mean, m2 = _local_moments(x, dtype)
    count = x.new_full((1,), x.numel() // channels, dtype=torch.float64)
    local = torch.cat([count, mean.double(), m2.double()])
    gathered = [torch.empty_like(local) for _ in range(comm.get_world_size())]
    dist.all_gather(gathered, local)
    stats = torch.stack(gathered)
    counts, means, m2s = stats[:, :1], stats[:, 1 : channels + 1], stats[:, channels + 1 :]
    total = counts.sum()
    global_mean = (counts * means).sum(0) / total.clamp(min=1)
    global_m2 = (m2s + counts * (means - global_mean) ** 2).sum(0)
    return total, global_mean.to(dtype), (global_m2 / total.clamp(min=1)).to(dtype)


def _batch_norm_act(x, weight, bias, running_mean, running_var, momentum, eps, slope, sync):
    """Training-mode BN (+ LeakyReLU) of ``x``; updates the running statistics.

    Returns (y, mean, invstd, count): y in x's dtype; mean and invstd in the statistics' dtype
    (float32 under autocast); count the number of values per channel over all processes (a
    tensor when synchronised: reading it would synchronise with the device).
    """
    count = x.numel() // x.shape[1]
    stats_dtype = _statistics_dtype(weight)
    if not _synchronised(sync):
        if count == 0:  # BatchNorm2d's result on an empty batch; running statistics untouched
            y = x.new_empty(x.shape)
            mean = torch.zeros_like(weight, dtype=stats_dtype)
            invstd = torch.ones_like(weight, dtype=stats_dtype)
            return y, mean, invstd, count
        # ATen's fused kernel: the same numbers and running-statistics update as BatchNorm2d.
        y, mean, invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
    else:
        count, mean, var = _global_moments(x, stats_dtype)
        if running_mean is not None:
            # No pixel anywhere: the running statistics stay (decided on the device).
            seen = count > 0
            unbiased = var * (count / (count - 1).clamp(min=1)).to(var.dtype)
            new_mean = running_mean * (1 - momentum) + mean * momentum
            new_var = running_var * (1 - momentum) + unbiased * momentum
            running_mean.copy_(torch.where(seen, new_mean, running_mean))
            running_var.copy_(torch.where(seen, new_var, running_var))
        invstd = torch.rsqrt(var + eps)
        # The normalisation with the global statistics as one fused kernel that computes in
        # float32 and writes x's dtype (no float32 copy of the activations under autocast).
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
    if slope is not None:
        F.leaky_relu_(y, slope)
    return y, mean, invstd, count


class _InPlaceABNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, slope, sync, small):
        with torch.no_grad():
            y, mean, invstd, count = _batch_norm_act(
                x, weight, bias, running_mean, running_var, momentum, eps, slope, sync
            )
            # Channels with a tiny weight cannot be recovered from y: keep their input.
            x_small = x[:, small].clone() if small is not None else None
        ctx.save_for_backward(y, weight, bias, mean, invstd, small, x_small)
        ctx.slope, ctx.sync, ctx.count, ctx.eps = slope, sync, count, eps
        ctx.input_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        y, weight, bias, mean, invstd, small, x_small = ctx.saved_tensors
        no_grads = [None] * 7
        # Under autocast the activations are bfloat16/float16 while the parameters and the
        # statistics stay float32: the inversion and the BN backward run in float32 (the
        # precision of the statistics), and the input's gradient returns in the input's dtype.
        y, dy = y.to(invstd.dtype), dy.to(invstd.dtype)
        synchronised = _synchronised(ctx.sync)
        if y.numel() == 0 and not synchronised:
            zeros = torch.zeros_like(weight)
            return dy.to(ctx.input_dtype), zeros, zeros.clone(), *no_grads
        if ctx.slope is not None:
            # LeakyReLU(slope) is inverted by LeakyReLU(1 / slope); its gradient needs only y.
            z = F.leaky_relu(y, 1.0 / ctx.slope)
            dz = torch.ops.aten.leaky_relu_backward(dy, y, ctx.slope, True)
        else:
            z, dz = y, dy
        # The BN input: x = (z - bias) / (weight * invstd) + mean, one fused pass.
        weight_s = weight.to(invstd.dtype)
        safe_weight = torch.where(
            weight_s.abs() < SMALL_WEIGHT, torch.ones_like(weight_s), weight_s
        )
        step = 1.0 / (safe_weight * invstd)
        x = torch.addcmul(_per_channel(mean - bias.to(step.dtype) * step), z, _per_channel(step))
        if x_small is not None:
            x[:, small] = x_small.to(x.dtype)
        if not synchronised:
            dx, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                dz, x, weight_s, None, None, mean, invstd, True, ctx.eps, [True, True, True]
            )
            return dx.to(ctx.input_dtype), grad_weight.to(weight.dtype), grad_bias, *no_grads
        x_hat = (x - _per_channel(mean)) * _per_channel(invstd)
        sum_dz = dz.sum(_DIMS)
        sum_dz_x_hat = (dz * x_hat).sum(_DIMS)
        grad_weight, grad_bias = sum_dz_x_hat.clone(), sum_dz.clone()  # local, as DDP expects
        # Every process joins, also one without pixels (its sums are 0).
        reduced = torch.cat([sum_dz, sum_dz_x_hat])
        dist.all_reduce(reduced)
        sum_dz, sum_dz_x_hat = reduced.split(len(sum_dz))
        count = ctx.count.clamp(min=1).to(sum_dz.dtype)
        dx = dz - _per_channel(sum_dz / count) - x_hat * _per_channel(sum_dz_x_hat / count)
        dx.mul_(_per_channel(weight_s * invstd))
        return (
            dx.to(ctx.input_dtype),
            grad_weight.to(weight.dtype),
            grad_bias.to(bias.dtype),
            *no_grads,
        )


class InPlaceABN(nn.BatchNorm2d):
    """BatchNorm2d followed by LeakyReLU(``slope``) (``slope=None``: no activation), iABN-style.

    Same parameters and buffers as BatchNorm2d. In training with autograd on, backward keeps
    only the output; otherwise (eval, no_grad) it is BatchNorm2d + an in-place LeakyReLU.
    """

    def __init__(self, num_features, *, slope=0.01, sync=False, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.slope = slope
        self.sync = sync
        self._small_channels = (None, None)  # (weight version key, index tensor or None)

    def extra_repr(self):
        return f"{super().extra_repr()}, slope={self.slope}, sync={self.sync}"

    def forward(self, x):
        if not self.training:
            if x.numel() == 0:
                return x.new_empty(x.shape)
            y = super().forward(x)
            return y if self.slope is None else F.leaky_relu_(y, self.slope)
        self.num_batches_tracked.add_(1)
        if not torch.is_grad_enabled():
            return _batch_norm_act(x, *self._function_args())[0]
        return _InPlaceABNFunction.apply(x, *self._function_args(), self.small_channels())

    def _weight_key(self):
        return (self.weight._version, self.weight.data_ptr(), self.weight.device)

    def small_channels(self):
        """Indices of the channels whose weight is too small to invert (None: there are none).

        Finding them reads the weight on the host (a device synchronisation), so the answer is
        kept until the weight changes; ``refresh_small_channels`` answers for every layer of a
        model with one synchronisation per optimizer step instead of one per layer.
        """
        key, small = self._small_channels
        if key != self._weight_key():
            flags = (self.weight.detach().abs() < SMALL_WEIGHT).tolist()
            self._set_small_channels(flags)
            small = self._small_channels[1]
        return small

    def _set_small_channels(self, flags):
        """``flags``: a host list of bools, one per channel."""
        small = [channel for channel, is_small in enumerate(flags) if is_small]
        small = torch.tensor(small, device=self.weight.device) if small else None
        self._small_channels = (self._weight_key(), small)

    def _function_args(self):
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as BatchNorm2d
            momentum = 1.0 / float(self.num_batches_tracked)
        return (
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            momentum,
            self.eps,
            self.slope,
            self.sync,
        )


@torch.no_grad()
def refresh_small_channels(module):
    """``InPlaceABN.small_channels`` of every training iABN layer in ``module`` with one read
    of all their weights (one device synchronisation per step instead of one per layer)."""
    layers = [m for m in module.modules() if isinstance(m, InPlaceABN) and m.training]
    stale = [m for m in layers if m._small_channels[0] != m._weight_key()]
    if not stale:
        return
    flags = torch.cat([(m.weight.abs() < SMALL_WEIGHT).to(stale[0].weight.device) for m in stale])
    flags = flags.tolist()  # the one host read
    start = 0
    for layer in stale:
        layer._set_small_channels(flags[start : start + layer.num_features])
        start += layer.num_features


def _slope_of(activation):
    if activation is None:
        return None, True
    if isinstance(activation, nn.LeakyReLU):
        return activation.negative_slope, True
    return None, False  # swish, ReLU: not invertible, left as they are


@torch.no_grad()
def convert_to_inplace_abn(module):
    """Swap BN + LeakyReLU (or BN alone) of every detectron2 Conv2d in ``module`` for InPlaceABN.

    BatchNorm2d becomes iABN; SyncBatchNorm and naiveSyncBN become iABN-sync. Frozen BN, GN and
    convs with other activations are left alone. Parameters, buffers and state-dict keys are
    unchanged. Returns how many layers were converted.
    """
    converted = 0
    for conv in module.modules():
        norm = getattr(conv, "norm", None)
        if not isinstance(conv, Conv2d) or isinstance(norm, InPlaceABN):
            continue
        if type(norm) not in (nn.BatchNorm2d, nn.SyncBatchNorm, NaiveSyncBatchNorm):
            continue
        if not norm.affine or not norm.track_running_stats:
            continue
        slope, invertible = _slope_of(conv.activation)
        if not invertible:
            continue
        sync = type(norm) is not nn.BatchNorm2d
        abn = InPlaceABN(
            norm.num_features, slope=slope, sync=sync, eps=norm.eps, momentum=norm.momentum
        )
        abn.load_state_dict(norm.state_dict())
        abn.train(norm.training)
        abn.to(norm.weight.device)
        conv.norm = abn
        conv.activation = None
        converted += 1
    return converted
