"""How a process computes float32 on GPUs: TF32 and deterministic algorithms (cfg.NUMERICS).

TF32 (NVIDIA Ampere and later) multiplies float32 with a 10-bit mantissa. torch lets cuDNN
convolutions use it by default and keeps matrix products in full float32; results then
differ from a CPU's by about 1e-3 relative. ``NUMERICS.TF32_CONVOLUTIONS`` /
``NUMERICS.TF32_MATMUL`` set both explicitly, in every process.

``NUMERICS.DETERMINISTIC`` asks torch for deterministic algorithms (cuDNN's deterministic
convolutions, no cuDNN benchmark, cuBLAS's fixed workspace, TF32 off), warning once for each
operation that has none. On a CPU training is bit-reproducible anyway (same data order from
SEED, same thread count); on CUDA torch has no deterministic backward for bilinear
interpolation (the semantic head and its loss) nor torchvision's ROIAlign: those warn, and
runs still differ in the last bits from their atomic additions.
"""

import logging
import os

import torch

logger = logging.getLogger(__name__)


def _set_fp32_precision(backend, tf32):
    """The precision of float32 math on ``backend`` ("conv" or "matmul"), torch 1.x-2.x."""
    if backend == "conv":
        modern = getattr(torch.backends.cudnn, "conv", None)
        legacy = (torch.backends.cudnn, "allow_tf32")
    else:
        modern = getattr(torch.backends.cuda, "matmul", None)
        legacy = (torch.backends.cuda.matmul, "allow_tf32")
    if modern is not None and hasattr(modern, "fp32_precision"):  # torch >= 2.9
        modern.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        setattr(*legacy, tf32)


def configure_numerics(cfg):
    """Apply cfg.NUMERICS to this process (each process of a launch calls it)."""
    numerics = cfg.NUMERICS
    deterministic = numerics.DETERMINISTIC
    _set_fp32_precision("conv", numerics.TF32_CONVOLUTIONS and not deterministic)
    _set_fp32_precision("matmul", numerics.TF32_MATMUL and not deterministic)
    if deterministic:
        # cuBLAS picks reduction orders per workspace; a fixed small one makes them repeat.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
        logger.info("NUMERICS.DETERMINISTIC: deterministic algorithms where torch has them")
