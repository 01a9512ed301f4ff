#!/usr/bin/env python
"""efficientps: EfficientPS panoptic segmentation as a detectron2 plugin.

detectron2 is a prerequisite that is not on PyPI: `make install` provides it (see README).
torch/torchvision are pinned in requirements/torch.txt and installed before this package.
"""

from setuptools import find_packages, setup

setup(
    name="efficientps",
    version="0.1.0",
    description="EfficientPS (Mohan & Valada, IJCV 2021) panoptic segmentation for detectron2",
    python_requires=">=3.9",
    # efficientps (the detectron2 plugin); efficientps_pq (the offline PQ command) and
    # efficientps_runtime (exported models under onnxruntime) import neither torch nor detectron2.
    packages=find_packages(exclude=("tests*", "benchmarks*", "configs*", "datasets*", "tools*")),
    install_requires=[
        "numpy",
        "Pillow",
        "opencv-python-headless",
        "imagecodecs",  # libdeflate for the PQ evaluator's PNG reading (zlib is the fallback)
        "numba",  # the PQ evaluator's per-pixel loops (PNG unfiltering, pair counting)
        "efficientnet-pytorch>=0.7.1",
        "pycocotools",
        "fvcore",
        "cityscapesscripts>=2.2",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "safetensors",  # ImageNet weights from the hub come as .safetensors (tensors only)
        # Export (tools/export_model.py) and the torch-free runtime (efficientps_runtime).
        "onnx",
        "onnxruntime",
        # torch.onnx.export's default (dynamo) exporter needs it: detectron2-style
        # torch.onnx.export(model.backbone, ...) failed with ModuleNotFoundError without it.
        "onnxscript",
    ],
    # hotcoco: the Rust PQ implementation that benchmarks/pq_eval.py compares against; timm:
    # the ImageNet-weights converter is tested against timm's own EfficientNets; openvino: the
    # runtime's second backend, tested and benchmarked.
    extras_require={
        "dev": ["pytest", "pytest-timeout", "ruff", "black", "hotcoco", "timm", "openvino"],
        "openvino": ["openvino"],
    },
)
