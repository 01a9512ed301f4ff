"""Checkpoint files: written crash-safe, read as untrusted.

Writing: a checkpoint file or the last_checkpoint tag is never half-written. detectron2 writes
both in place, so a kill during the write leaves a truncated file that ``--resume`` would then
try to load. Here each is written to a temporary file in the same folder, flushed to disk and
renamed over the target (atomic on POSIX).

Reading: files users download are untrusted. They are read with
``torch.load(weights_only=True)`` (tensors and plain containers only), and a file that needs
other objects is refused, not unpickled; errors name the option that gave the file.
"""

import logging
import os
import pickle
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def atomic_write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not comm.is_main_process():
            return
        tag = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(tag, lambda f: f.write(last_filename_basename.encode()))

    def get_checkpoint_file(self):
        """The tagged checkpoint if it exists and is complete, else the newest complete one."""
        path = super().get_checkpoint_file()
        if path and os.path.isfile(path):
            return path
        if path:
            logger.warning(f"last_checkpoint names {path}, which does not exist; looking further")
        candidates = [
            os.path.join(self.save_dir, f)
            for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and not f.startswith(".tmp-")
        ]
        return max(candidates, key=os.path.getmtime) if candidates else ""


def load_untrusted(path, what):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    A file that needs other objects is refused, not unpickled (that would run code from it);
    errors name ``what`` (the key or option that gave the file) and the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # damaged or not a checkpoint at all
            raise ValueError(f"{what}: cannot read {path!r} as a torch checkpoint: {e}") from e
        raise ValueError(
            f"{what}: {path!r} holds objects other than tensors and plain containers, "
            "and loading it would run arbitrary code from the file; this is refused. Re-save "
            "its state dict with torch.save({'model': model.state_dict()}, path) where you "
            f"trust it. ({e})"
        ) from e
    except Exception as e:
        raise ValueError(f"{what}: cannot read {path!r} as a torch checkpoint: {e}") from e


def read_checkpoint(path):
    """The state dict of a checkpoint file, read without unpickling arbitrary objects.

    Accepts detectron2/efficientps checkpoints ({"model": state_dict, ...}) and bare state
    dicts. Files are untrusted: ``torch.load(weights_only=True)`` allows tensors and plain
    containers only, so a file that needs other objects is refused, not executed.
    """
    if not path:
        raise ValueError("MODEL.WEIGHTS is empty: set MODEL.WEIGHTS /path/to/model.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS: no file {path!r}")
    checkpoint = load_untrusted(path, "MODEL.WEIGHTS")
    weights = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"MODEL.WEIGHTS: {path!r} holds no state dict (a {type(checkpoint)})")
    return weights


def load_weights_or_fail(model, path, save_dir=""):
    """Load MODEL.WEIGHTS into ``model`` for inference, failing clearly on a wrong file.

    The file is checked first (``read_checkpoint``; at least half of the model's tensors must
    be in it), then loaded by detectron2's DetectionCheckpointer, which reports missing and
    unexpected keys and skips tensors of the wrong shape.
    """
    weights = read_checkpoint(path)
    check_weights_fit(model, weights, path)
    DetectionCheckpointer(model, save_dir=save_dir).load(path, checkpointables=[])


def check_weights_fit(model, weights, path):
    """Fail unless ``weights`` hold at least half of ``model``'s tensors (else: wrong file)."""
    expected = set(model.state_dict())
    found = set(weights) & expected
    if len(found) < len(expected) // 2:
        raise ValueError(
            f"MODEL.WEIGHTS: {path!r} holds {len(found)} of the model's {len(expected)} tensors; "
            "it is not a checkpoint of this model (wrong config or file?)"
        )
    logger.info(f"{path}: {len(found)}/{len(expected)} of the model's tensors")
