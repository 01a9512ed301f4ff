"""Command-line inputs: files, globs and folders to a list of paths, and the images they name
(the runtime's and the PyTorch demo's ``--input``)."""

import glob
import os

import cv2

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def expand_inputs(patterns, extensions=IMAGE_EXTENSIONS, kinds="image", option="--input"):
    """Files, globs and folders -> paths, in order (a folder gives its files whose extension is
    one of ``extensions``, sorted). A pattern matching nothing fails naming it and the
    command-line ``option``; ``kinds`` says what it should have matched ("image", "image, video").
    """
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [
                os.path.join(pattern, f)
                for f in sorted(os.listdir(pattern))
                if os.path.splitext(f)[1].lower() in extensions
            ]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"{option} {pattern!r} matches no {kinds} or folder")
        paths.extend(found)
    return paths


class UnreadableInputError(ValueError):
    """An input file that cannot be read as an image (or video): names the file and why."""


def read_image(path):
    """The BGR image at ``path`` (OpenCV), or UnreadableInputError naming the file and why."""
    if os.path.isdir(path):
        raise UnreadableInputError(f"{path}: a folder, not an image")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise UnreadableInputError(f"{path}: empty file")
        raise UnreadableInputError(
            f"{path}: not an image OpenCV can decode ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return image
