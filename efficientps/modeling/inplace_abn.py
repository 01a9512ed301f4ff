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


def _batch_norm_act(x, weight, bias, running_mean, running_var, momentum, eps, slope, sync):
    """Training-mode BN (+ LeakyReLU) of ``x``; updates the running statistics.

    Returns (y, mean, invstd, count): count is the number of values per channel (all processes).
    """
    count = x.numel() // x.shape[1]
    if not _synchronised(sync):
        # ATen's fused kernel: the same numbers and running-statistics update as BatchNorm2d.
        y, mean, invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
    else:
        channels = x.shape[1]
        stats = torch.cat([x.sum(_DIMS), (x * x).sum(_DIMS), x.new_tensor([count])])
        dist.all_reduce(stats)
        count = int(stats[-1].item())
        mean = stats[:channels] / count
        var = (stats[channels : 2 * channels] / count - mean * mean).clamp(min=0)
        if running_mean is not None:
            unbiased = var * (count / max(count - 1, 1))
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        y = torch.addcmul(_per_channel(bias - mean * scale), x, _per_channel(scale))
    if slope is not None:
        F.leaky_relu_(y, slope)
    return y, mean, invstd, count


class _InPlaceABNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, slope, sync):
        with torch.no_grad():
            y, mean, invstd, count = _batch_norm_act(
                x, weight, bias, running_mean, running_var, momentum, eps, slope, sync
            )
            # Channels with a tiny weight cannot be recovered from y: keep their input.
            small = torch.nonzero(weight.abs() < SMALL_WEIGHT).flatten()
            x_small = x[:, small].clone() if len(small) else None
        ctx.save_for_backward(y, weight, bias, mean, invstd, small, x_small)
        ctx.slope, ctx.sync, ctx.count, ctx.eps = slope, sync, count, eps
        ctx.input_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        y, weight, bias, mean, invstd, small, x_small = ctx.saved_tensors
        # Under autocast the activations are bfloat16/float16 while the parameters and the
        # statistics stay float32: the inversion and the BN backward run in float32 (the
        # precision of the statistics), and the input's gradient returns in the input's dtype.
        y, dy = y.to(weight.dtype), dy.to(weight.dtype)
        if ctx.slope is not None:
            # LeakyReLU(slope) is inverted by LeakyReLU(1 / slope); its gradient needs only y.
            z = F.leaky_relu(y, 1.0 / ctx.slope)
            dz = torch.ops.aten.leaky_relu_backward(dy, y, ctx.slope, True)
        else:
            z, dz = y, dy
        # The BN input: x = (z - bias) / (weight * invstd) + mean, one fused pass.
        safe_weight = torch.where(weight.abs() < SMALL_WEIGHT, torch.ones_like(weight), weight)
        step = 1.0 / (safe_weight * invstd)
        x = torch.addcmul(_per_channel(mean - bias * step), z, _per_channel(step))
        if x_small is not None:
            x[:, small] = x_small
        if not _synchronised(ctx.sync):
            dx, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                dz, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True]
            )
            return dx.to(ctx.input_dtype), grad_weight, grad_bias, *[None] * 6
        x_hat = (x - _per_channel(mean)) * _per_channel(invstd)
        sum_dz = dz.sum(_DIMS)
        sum_dz_x_hat = (dz * x_hat).sum(_DIMS)
        grad_weight, grad_bias = sum_dz_x_hat.clone(), sum_dz.clone()  # local, as DDP expects
        reduced = torch.cat([sum_dz, sum_dz_x_hat])
        dist.all_reduce(reduced)
        sum_dz, sum_dz_x_hat = reduced.split(len(sum_dz))
        count = ctx.count
        dx = dz - _per_channel(sum_dz / count) - x_hat * _per_channel(sum_dz_x_hat / count)
        dx.mul_(_per_channel(weight * invstd))
        return dx.to(ctx.input_dtype), grad_weight, grad_bias, *[None] * 6


class InPlaceABN(nn.BatchNorm2d):
    """BatchNorm2d followed by LeakyReLU(``slope``) (``slope=None``: no activation), iABN-style.

    Same parameters and buffers as BatchNorm2d. In training with autograd on, backward keeps
    only the output; otherwise (eval, no_grad) it is BatchNorm2d + an in-place LeakyReLU.
    """

    def __init__(self, num_features, *, slope=0.01, sync=False, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.slope = slope
        self.sync = sync

    def extra_repr(self):
        return f"{super().extra_repr()}, slope={self.slope}, sync={self.sync}"

    def forward(self, x):
        if not self.training:
            y = super().forward(x)
            return y if self.slope is None else F.leaky_relu_(y, self.slope)
        self.num_batches_tracked.add_(1)
        if not torch.is_grad_enabled():
            return _batch_norm_act(x, *self._function_args())[0]
        return _InPlaceABNFunction.apply(x, *self._function_args())

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
