"""COCO-panoptic id PNGs (id = R + 256 G + 256^2 B) read straight into ids, and written.

PQ evaluation is bound by PNG decoding: a 1024x2048 panoptic PNG is a few kilobytes that inflate
into 6 MB. libpng (OpenCV, imagecodecs.png_decode) takes ~13 ms for one, 9 of them in zlib's
inflate. Here the container is parsed in Python, the image data inflated by libdeflate (through
imagecodecs; ~1.5 ms) and the PNG row filters undone straight into 24-bit ids by a compiled
loop (~3 ms), all without the GIL. Files that are not plain 8-bit RGB/RGBA (palette, grey,
16-bit, interlaced) go through OpenCV.
"""

import struct
import zlib

import numpy as np

from .kernels import unfilter_png_ids
from .panoptic_ids import id_to_rgb, rgb_to_id
from .panoptic_quality import PanopticFormatError

try:
    import imagecodecs
except ImportError:  # optional: zlib inflates instead of libdeflate, ~6x slower
    imagecodecs = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RGB, RGBA = 2, 6  # PNG colour types


def read_panoptic_png(path):
    """(H, W) uint32 segment ids of a COCO-panoptic RGB(A) PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(PNG_SIGNATURE):
        raise PanopticFormatError(f"{path}: not a PNG file (expected a COCO-panoptic RGB PNG)")
    ids = _decode_ids(data, path)
    if ids is not None:
        return ids
    import cv2  # here, not above: the offline PQ command starts 0.2 s faster without it

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PanopticFormatError(f"{path}: OpenCV cannot decode this PNG")
    return rgb_to_id(bgr[..., ::-1], np.uint32)


def write_panoptic_png(path, ids):
    import cv2  # see read_panoptic_png

    cv2.imwrite(path, id_to_rgb(ids)[..., ::-1])


def _chunks(data, path):
    """(type, body) of each chunk after the signature, checking lengths and CRCs."""
    position = len(PNG_SIGNATURE)
    while position < len(data):
        if position + 8 > len(data):
            raise PanopticFormatError(f"{path}: truncated PNG (chunk header at byte {position})")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 8 + length
        if end + 4 > len(data):
            raise PanopticFormatError(f"{path}: truncated PNG ({kind!r} chunk at byte {position})")
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[position + 4 : end]) != crc:
            raise PanopticFormatError(f"{path}: corrupt PNG ({kind!r} chunk CRC mismatch)")
        yield kind, data[position + 8 : end]
        if kind == b"IEND":
            return
        position = end + 4
    raise PanopticFormatError(f"{path}: truncated PNG (no IEND chunk)")


def _decode_ids(data, path):
    """Ids of a plain 8-bit RGB/RGBA PNG, or None for other kinds of PNG."""
    header = None
    image_data = []
    for kind, body in _chunks(data, path):
        if kind == b"IHDR":
            if len(body) != 13:
                raise PanopticFormatError(f"{path}: corrupt PNG (IHDR of {len(body)} bytes)")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            image_data.append(body)
    if header is None or not image_data:
        raise PanopticFormatError(f"{path}: PNG without IHDR or IDAT chunk")
    width, height, bit_depth, colour_type, _, _, interlace = header
    if bit_depth != 8 or colour_type not in (RGB, RGBA) or interlace:
        return None
    channels = 3 if colour_type == RGB else 4
    size = height * (width * channels + 1)
    compressed = b"".join(image_data)
    try:
        if imagecodecs is not None:
            raw = imagecodecs.deflate_decode(compressed, out=size)
        else:
            raw = zlib.decompress(compressed, bufsize=size)
    except Exception as e:
        raise PanopticFormatError(f"{path}: corrupt PNG image data ({e})") from e
    if len(raw) != size:
        raise PanopticFormatError(
            f"{path}: PNG image data inflates to {len(raw)} bytes, expected {size} for "
            f"{width}x{height} with {channels} channels"
        )
    ids = np.empty((height, width), np.uint32)
    bad_row = unfilter_png_ids(np.frombuffer(raw, np.uint8), height, width, channels, ids)
    if bad_row >= 0:
        raise PanopticFormatError(f"{path}: PNG row {bad_row} has an unknown filter type")
    return ids
