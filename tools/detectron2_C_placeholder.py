# Placeholder for detectron2's compiled extension, written by efficientps' installer.
#
# detectron2 is not published on PyPI by its authors; the registry snapshot we install carries its
# Python code only. A few modules import `detectron2._C` at module level (deformable conv, rotated
# boxes, the fast COCO evaluator), so without this file detectron2 itself would not import. Mask
# R-CNN, Panoptic FPN and EfficientPS use torchvision's RoIAlign/NMS and never call into it. Any
# call into a compiled op raises an error that names the op and says how to get the real build.
"""Stand-in for ``detectron2._C``: importable, but every compiled op raises a clear error."""

IS_EFFICIENTPS_PLACEHOLDER = True


class MissingCompiledOpError(RuntimeError):
    """A detectron2 op that only exists in the compiled extension was called."""


def _missing(op_name):
    def _raise(*args, **kwargs):
        raise MissingCompiledOpError(
            f"detectron2 op '{op_name}' needs detectron2's compiled extension (detectron2._C), "
            "but this detectron2 was installed from the registry snapshot without C++/CUDA ops. "
            "Build detectron2 from source (see detectron2's INSTALL.md) and reinstall with "
            "`DETECTRON2_SRC=/path/to/detectron2 make install`, or install an official build "
            "into the environment before running `make install` (an importable detectron2 is kept)."
        )

    _raise.__name__ = op_name
    return _raise


def _register_torch_ops():
    # detectron2.layers.nms_rotated dispatches through torch.ops.detectron2.nms_rotated rather than
    # this module; register a stand-in there too so it fails with the same message.
    import torch

    global _TORCH_LIBRARY
    try:
        _TORCH_LIBRARY = torch.library.Library("detectron2", "DEF")
        schema = "nms_rotated(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        _TORCH_LIBRARY.define(schema)
        _TORCH_LIBRARY.impl("nms_rotated", _missing("nms_rotated"), "CompositeExplicitAutograd")
    except RuntimeError:  # already defined (module re-imported, or a real build registered it)
        pass


_register_torch_ops()


def get_compiler_version():
    return "none (efficientps placeholder for detectron2._C: compiled ops unavailable)"


def get_cuda_version():
    return "none (efficientps placeholder for detectron2._C: compiled ops unavailable)"


def has_cuda():
    return False


def __getattr__(name):
    # PEP 562: any other attribute is a compiled op; dunder lookups must stay AttributeErrors so
    # that pickling, hasattr() and introspection keep working.
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)
