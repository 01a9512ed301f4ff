"""In-place activated BN: the same function and gradients as BN + LeakyReLU, with less saved."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

from efficientps.modeling import InPlaceABN, configure_inference, convert_to_inplace_abn
from efficientps.modeling.layers import SeparableConv2d, conv_norm_act

from .helpers import kept_bytes


def bn_with_awkward_weights(channels=6):
    bn = nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01).double()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=torch.Generator().manual_seed(1)))
        bn.weight[0] = 1e-5  # too small to invert: kept from the input
        bn.weight[1] = -0.8  # ImageNet EfficientNets have negative gammas
        bn.bias.uniform_(-1, 1)
    return bn


def run(module, x, grad, activation=None):
    x = x.clone().requires_grad_(True)
    out = module(x * 1.0)  # not a leaf: the input of a norm is a conv output in practice
    out = activation(out) if activation is not None else out
    (out * grad).sum().backward()
    return out.detach(), x.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize("slope", [0.01, 0.2, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_gradients_and_statistics_as_batchnorm_plus_leaky_relu(slope, channels_last):
    torch.manual_seed(0)
    bn = bn_with_awkward_weights()
    abn = InPlaceABN(6, slope=slope, eps=1e-3, momentum=0.01).double()
    abn.load_state_dict(bn.state_dict())
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    act = None if slope is None else (lambda t: F.leaky_relu(t, slope))
    for _ in range(2):  # twice: running statistics and num_batches_tracked move alike
        bn.zero_grad(), abn.zero_grad()
        expected = run(bn, x, grad, act)
        actual = run(abn, x, grad)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)
    for name, buffer in bn.named_buffers():
        torch.testing.assert_close(getattr(abn, name), buffer, atol=1e-12, rtol=1e-12)
    bn.eval(), abn.eval()
    with torch.no_grad():
        expected = bn(x) if act is None else act(bn(x))
        torch.testing.assert_close(abn(x), expected)


def test_training_without_autograd_matches_batchnorm():
    bn = bn_with_awkward_weights()
    abn = InPlaceABN(6, eps=1e-3, momentum=0.01).double()
    abn.load_state_dict(bn.state_dict())
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(abn(x), F.leaky_relu(bn(x), 0.01))
    torch.testing.assert_close(abn.running_var, bn.running_var)


def conv_stack(norm="BN", act="leaky_relu"):
    torch.manual_seed(0)
    return nn.Sequential(
        conv_norm_act(8, 32, 1, norm=norm, act=act),
        SeparableConv2d(32, 32, 3, norm=norm, act=act),
        conv_norm_act(32, 8, 1, norm=norm),  # BN without activation (EfficientNet's projection)
    )


def test_converted_model_keeps_half_the_activations_and_the_same_state_dict():
    model = conv_stack()
    converted = copy.deepcopy(model)
    assert convert_to_inplace_abn(converted) == 4
    assert list(converted.state_dict()) == list(model.state_dict())
    convs = [m for m in converted.modules() if hasattr(m, "norm")]
    assert all(isinstance(m.norm, InPlaceABN) and m.activation is None for m in convs)
    x = torch.randn(2, 8, 64, 64, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)
    _, plain = kept_bytes(lambda: model(x).sum())
    _, inplace = kept_bytes(lambda: converted(x).sum())
    assert inplace < 0.6 * plain, (plain, inplace)

    model.double(), converted.double()
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    weights = torch.randn(2, 8, 16, 16, dtype=torch.float64)  # a loss BN is not invariant to
    (model(x) * weights).sum().backward()
    (converted(x) * weights).sum().backward()
    for (name, p), q in zip(model.named_parameters(), converted.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-9, rtol=1e-7, msg=name)


def test_conversion_leaves_what_it_cannot_invert_and_folding_keeps_the_activation():
    swish = conv_stack(act="swish")
    assert convert_to_inplace_abn(swish) == 1  # only the projection (BN, no activation)
    frozen = conv_stack()
    for m in frozen.modules():
        if hasattr(m, "norm") and isinstance(m.norm, nn.BatchNorm2d):
            m.norm = FrozenBatchNorm2d(m.norm.num_features)
    assert convert_to_inplace_abn(frozen) == 0

    model = conv_stack()
    with torch.no_grad():
        model.train()(torch.randn(4, 8, 16, 16) * 3)  # BN statistics away from identity
    convert_to_inplace_abn(model)
    model.eval()
    x = torch.randn(1, 8, 16, 16)
    assert configure_inference(model, fold_norm=False) == 4
    with torch.no_grad():
        expected = model(x)
        configure_inference(model, fold_norm=True)
        folded = model(x)
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    assert isinstance(model[0].norm, InPlaceABN) and model[0].activation is None


def _sync_worker(rank, init_file, x, grad, state, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    abn = InPlaceABN(6, sync=True, eps=1e-3, momentum=0.01).double()
    abn.load_state_dict(state)
    half = x.shape[0] // 2
    mine = slice(rank * half, (rank + 1) * half)
    out, dx, dw, db = run(abn, x[mine], grad[mine])
    dist.all_reduce(dw), dist.all_reduce(db)  # what DDP does with the local parameter grads
    torch.save(
        {"out": out, "dx": dx, "dw": dw, "db": db, "running_var": abn.running_var},
        f"{results}.{rank}",
    )
    dist.destroy_process_group()


def test_sync_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    bn = bn_with_awkward_weights()
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64)
    grad = torch.randn_like(x)
    results = tmp_path / "result"
    args = (str(tmp_path / "init"), x, grad, bn.state_dict(), str(results))
    mp.spawn(_sync_worker, args=args, nprocs=2, join=True)
    single = InPlaceABN(6, eps=1e-3, momentum=0.01).double()
    single.load_state_dict(bn.state_dict())
    out, dx, dw, db = run(single, x, grad)
    parts = [torch.load(f"{results}.{rank}") for rank in range(2)]
    torch.testing.assert_close(torch.cat([p["out"] for p in parts]), out)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), dx)
    for part in parts:
        torch.testing.assert_close(part["dw"], dw)
        torch.testing.assert_close(part["db"], db)
        torch.testing.assert_close(part["running_var"], single.running_var)
