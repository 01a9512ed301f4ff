"""Panoptic PNG decoding: every PNG row filter, RGB and RGBA, split image data, other PNG kinds
through OpenCV, and clear errors for damaged files."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from efficientps_pq import (
    PanopticFormatError,
    id_to_rgb,
    panoptic_png,
    read_panoptic_png,
    write_panoptic_png,
)

FILTERS = (0, 1, 2, 3, 4)  # None, Sub, Up, Average, Paeth


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def encode_png(pixels, row_filters, idat_chunks=3):
    """A PNG of (H, W, 3|4) uint8 ``pixels`` with the given filter type on each row: a small
    independent encoder, so that the decoder is checked on filters libpng's heuristics may not
    choose."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(np.int64)
    filtered = []
    for y, kind in enumerate(row_filters):
        line = rows[y]
        up = rows[y - 1] if y else np.zeros_like(line)
        left = np.concatenate([np.zeros(channels, np.int64), line[:-channels]])
        up_left = np.concatenate([np.zeros(channels, np.int64), up[:-channels]])
        predictor = {
            0: np.zeros_like(line),
            1: left,
            2: up,
            3: (left + up) // 2,
            4: _paeth(left, up, up_left),
        }[kind]
        filtered.append(np.concatenate([[kind], (line - predictor) % 256]).astype(np.uint8))
    data = zlib.compress(np.concatenate(filtered).tobytes())
    pieces = np.array_split(np.frombuffer(data, np.uint8), idat_chunks)
    colour_type = 2 if channels == 3 else 6
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        panoptic_png.PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + b"".join(_chunk(b"IDAT", piece.tobytes()) for piece in pieces)
        + _chunk(b"IEND", b"")
    )


def panoptic_ids(height=40, width=57, seed=0):
    """Blocky segments with large ids, plus noisy pixels so that every byte varies."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2**24, (4, 5))
    ids = np.kron(blocks, np.ones((height // 4 + 1, width // 5 + 1), np.int64))[:height, :width]
    noise = rng.random((height, width)) < 0.2
    ids[noise] = rng.integers(0, 2**24, int(noise.sum()))
    return ids


@pytest.fixture(params=["libdeflate", "zlib"])
def inflater(request, monkeypatch):
    if request.param == "zlib":
        monkeypatch.setattr(panoptic_png, "imagecodecs", None)
    else:
        assert panoptic_png.imagecodecs is not None  # installed by make install
    return request.param


@pytest.mark.parametrize("channels", [3, 4])
def test_every_row_filter_decodes_to_the_ids(tmp_path, inflater, channels):
    ids = panoptic_ids()
    pixels = id_to_rgb(ids)
    if channels == 4:
        alpha = np.random.default_rng(1).integers(0, 256, ids.shape + (1,), dtype=np.uint8)
        pixels = np.concatenate([pixels, alpha], axis=-1)
    # Each filter after each other filter, and on the first row (no row above).
    for first in FILTERS:
        row_filters = [first] + [FILTERS[(first + i) % 5] for i in range(1, len(ids))]
        path = tmp_path / f"filters_{first}.png"
        path.write_bytes(encode_png(pixels, row_filters))
        decoded = read_panoptic_png(str(path))
        assert decoded.dtype == np.uint32 and np.array_equal(decoded, ids)
        # The test's encoder writes real PNGs: OpenCV reads the same pixels.
        bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(bgr[..., [2, 1, 0]], pixels[..., :3])


def test_files_written_by_opencv_and_pillow(tmp_path, inflater):
    ids = panoptic_ids(64, 96, seed=2)
    write_panoptic_png(str(tmp_path / "opencv.png"), ids)
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "pillow.png")  # cityscapesscripts' writer
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "pillow9.png", compress_level=9)
    rgba = np.concatenate([id_to_rgb(ids), np.full(ids.shape + (1,), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "pillow_rgba.png")
    for name in ("opencv.png", "pillow.png", "pillow9.png", "pillow_rgba.png"):
        assert np.array_equal(read_panoptic_png(str(tmp_path / name)), ids), name


def test_other_png_kinds_go_through_opencv(tmp_path):
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    expected = grey.astype(np.uint32) * (1 + 256 + 65536)  # grey as R = G = B
    assert np.array_equal(read_panoptic_png(str(tmp_path / "grey.png")), expected)
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 1, 2, 3] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    first, second = 10 + 256 * 20 + 65536 * 30, 1 + 256 * 2 + 65536 * 3
    ids = read_panoptic_png(str(tmp_path / "palette.png"))
    assert ids.tolist() == [[first, second], [second, first]]


def test_damaged_files_give_errors_naming_the_file(tmp_path):
    good = encode_png(id_to_rgb(panoptic_ids()), [1] * 40, idat_chunks=1)
    cases = {
        "not_png.png": b"GIF89a....",
        "truncated.png": good[: len(good) // 2],
        "bad_crc.png": good[:-5] + bytes([good[-5] ^ 1]) + good[-4:],
        "no_iend.png": good[: -len(_chunk(b"IEND", b""))],
    }
    # An unknown filter type (7) on one row.
    pixels = id_to_rgb(panoptic_ids())
    raw = np.concatenate([np.full((40, 1), 1, np.uint8), pixels.reshape(40, -1)], axis=1)
    raw[5, 0] = 7
    header = struct.pack(">IIBBBBB", 57, 40, 8, 2, 0, 0, 0)
    cases["bad_filter.png"] = (
        panoptic_png.PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes()))
        + _chunk(b"IEND", b"")
    )
    # Image data for fewer rows than the header says.
    cases["short_data.png"] = (
        panoptic_png.PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw[:30].tobytes()))
        + _chunk(b"IEND", b"")
    )
    expected = {
        "not_png.png": "not a PNG",
        "truncated.png": "truncated PNG",
        "bad_crc.png": "CRC mismatch",
        "no_iend.png": "no IEND",
        "bad_filter.png": "row 5 has an unknown filter type",
        "short_data.png": "expected 6880 for 57x40|corrupt PNG image data",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PanopticFormatError, match=f"{name}.*({expected[name]})"):
            read_panoptic_png(str(tmp_path / name))


def _fuzzed_pngs(good, rng, count):
    """Structure-aware mutations of a valid RGB PNG, every chunk with a valid CRC: damaged IHDR
    fields, row filter bytes, inflated sizes, chunk lengths, split or padded image data."""
    header = good[16:29]
    width, height, *rest = struct.unpack(">IIBBBBB", header)
    idat = b"".join(body for kind, body in panoptic_png._chunks(good, "good") if kind == b"IDAT")
    raw = bytearray(zlib.decompress(idat))
    row_bytes = width * 3 + 1

    def png(ihdr=header, data=None, chunks=None):
        chunks = chunks or [_chunk(b"IDAT", zlib.compress(bytes(raw if data is None else data)))]
        return (
            panoptic_png.PNG_SIGNATURE
            + _chunk(b"IHDR", ihdr)
            + b"".join(chunks)
            + _chunk(b"IEND", b"")
        )

    sizes = (0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF)
    for _ in range(count):
        kind = rng.integers(6)
        if kind == 0:  # one IHDR field
            fields = [width, height, *rest]
            field = int(rng.integers(7))
            if field < 2:
                fields[field] = int(rng.choice([*sizes, fields[field] + int(rng.integers(-3, 4))]))
            else:
                fields[field] = int(rng.integers(256))
            yield png(ihdr=struct.pack(">IIBBBBB", *fields))
        elif kind == 1:  # filter bytes of a few rows
            data = bytearray(raw)
            for row in rng.integers(height, size=int(rng.integers(1, 4))):
                data[int(row) * row_bytes] = int(rng.integers(256))
            yield png(data=data)
        elif kind == 2:  # image data cut or extended
            cut = int(rng.integers(1, len(raw)))
            yield png(data=raw[:cut] if rng.integers(2) else raw + raw[:cut])
        elif kind == 3:  # random bytes of the compressed stream (CRC recomputed)
            stream = bytearray(zlib.compress(bytes(raw)))
            for position in rng.integers(len(stream), size=int(rng.integers(1, 6))):
                stream[int(position)] = int(rng.integers(256))
            yield png(chunks=[_chunk(b"IDAT", bytes(stream))])
        elif kind == 4:  # a chunk length field that lies
            chunk = bytearray(_chunk(b"IDAT", zlib.compress(bytes(raw))))
            chunk[:4] = struct.pack(">I", int(rng.choice([0, 1, len(chunk), 0xFFFFFFFF])))
            yield png(chunks=[bytes(chunk)])
        else:  # image data split into pieces, with an unknown ancillary chunk between
            stream = zlib.compress(bytes(raw))
            cut = int(rng.integers(1, len(stream)))
            pieces = [
                _chunk(b"IDAT", stream[:cut]),
                _chunk(b"zzZz", b"x"),
                _chunk(b"IDAT", stream[cut:]),
            ]
            yield png(chunks=pieces)


def test_fuzzed_pngs_decode_or_fail_cleanly(tmp_path):
    """Keeps the compiled decoder honest: damaged files give ids or a PanopticFormatError
    naming the file, never another exception (or a crash of the process)."""
    ids = (np.random.default_rng(0).integers(0, 6, (40, 57)) * 1000 + 7).astype(np.uint32)
    path = str(tmp_path / "good.png")
    write_panoptic_png(path, ids)
    with open(path, "rb") as f:
        good = f.read()
    decoded = failed = 0
    for i, data in enumerate(_fuzzed_pngs(good, np.random.default_rng(1), 600)):
        fuzzed = tmp_path / f"fuzz{i:03d}.png"
        fuzzed.write_bytes(data)
        try:
            result = read_panoptic_png(str(fuzzed))
        except PanopticFormatError as e:
            assert f"fuzz{i:03d}.png" in str(e)
            failed += 1
        else:
            width, height = struct.unpack(">II", data[16:24])
            assert result.shape == (height, width) and result.dtype == np.uint32
            decoded += 1
    assert decoded > 50 and failed > 300, (decoded, failed)
