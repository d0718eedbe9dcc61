"""decode_image: any supported file -> RGB uint8 (H, W, 3), or DecodeError with a short reason.

Test images are built in tmp_path with OpenCV, or by hand (struct + zlib) for what OpenCV
cannot write: palette and gray+alpha PNGs, EXIF orientation, and a CMYK JPEG.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import COCO_DIR as COCO
from helpers import needs_coco

from mrcnn_cli.decode import DEFAULT_MAX_PIXELS, decode_image, decode_image_safe
from mrcnn_cli.errors import DecodeError, FailedItem

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- builders ---------------------------------------------------------------------


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def encode(ext: str, img: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def marked_bgr(height: int = 20, width: int = 40) -> np.ndarray:
    """Black image, red top-left corner and green bottom-left corner (BGR order)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:5, :5] = RED[::-1]
    img[-5:, :5] = GREEN[::-1]
    return img


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def hand_png(rows: np.ndarray, color_type: int, extra: bytes = b"", bit_depth: int = 8) -> bytes:
    """A PNG from raw 8-bit samples `rows` (H, W*samples); filter type 0 on every row."""
    height = rows.shape[0]
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    width = rows.shape[1] // samples
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def exif_block(orientation: int, byte_order: str = "<") -> bytes:
    """A TIFF-structured EXIF block whose IFD0 holds only the Orientation tag."""
    header = (b"II" if byte_order == "<" else b"MM") + struct.pack(byte_order + "HI", 42, 8)
    entry = struct.pack(byte_order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return header + struct.pack(byte_order + "H", 1) + entry + struct.pack(byte_order + "I", 0)


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def with_exif_orientation(jpeg: bytes, orientation: int, byte_order: str = "<") -> bytes:
    """Insert an APP1 Exif segment right after SOI."""
    app1 = jpeg_segment(0xE1, b"Exif\x00\x00" + exif_block(orientation, byte_order))
    return jpeg[:2] + app1 + jpeg[2:]


def split_jpeg(data: bytes) -> tuple[bytes, bytes]:
    """The DQT + DHT segments of a single-scan JPEG, and its entropy-coded scan data."""
    tables, pos = b"", 2
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if data[pos + 1] in (0xDB, 0xC4):
            tables += data[pos : pos + 2 + length]
        pos += 2 + length
    (length,) = struct.unpack_from(">H", data, pos + 2)
    return tables, data[pos + 2 + length : data.rindex(b"\xff\xd9")]


def cmyk_jpeg(cyan: np.ndarray, magenta: np.ndarray, yellow: np.ndarray, black: np.ndarray):
    """A baseline CMYK JPEG (Adobe APP14), one scan per ink, from ink amounts 0..255.

    Each ink plane is encoded as a grayscale JPEG by OpenCV; all four share the standard
    Huffman tables and the same quantisation table, so their scans can be put into one
    4-component frame. Adobe CMYK stores inverted values (255 = no ink).
    """
    parts = [split_jpeg(encode(".jpg", 255 - ink)) for ink in (cyan, magenta, yellow, black)]
    assert len({tables for tables, _ in parts}) == 1
    height, width = cyan.shape
    components = b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3, 4))
    out = b"\xff\xd8" + jpeg_segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
    out += parts[0][0] + jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 4) + components)
    for component, (_, scan) in enumerate(parts, start=1):
        out += jpeg_segment(0xDA, bytes([1, component, 0x00, 0, 63, 0])) + scan
    return out + b"\xff\xd9"


def coco_image() -> tuple[Path, int, int]:
    """The first COCO val image with its annotated width and height."""
    info = json.loads((COCO / "instances.json").read_text())["images"][0]
    return COCO / "images" / info["file_name"], info["width"], info["height"]


def assert_colour(pixel: np.ndarray, expected: tuple[int, int, int], tol: int = 8) -> None:
    assert np.abs(pixel.astype(int) - np.array(expected)).max() <= tol, (pixel, expected)


# --- images that decode ------------------------------------------------------------


@needs_coco
def test_real_coco_image_decodes_to_its_annotated_size():
    path, width, height = coco_image()
    img = decode_image(path)
    assert img.shape == (height, width, 3)
    assert img.dtype == np.uint8
    assert img.flags.c_contiguous


def test_colour_png_comes_back_in_rgb_order(tmp_path):
    img = decode_image(write(tmp_path, "c.png", encode(".png", marked_bgr())))
    assert tuple(img[0, 0]) == RED
    assert tuple(img[-1, 0]) == GREEN


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    img = decode_image(write(tmp_path, "g.png", encode(".png", gray)))
    assert img.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(img[:, :, channel], gray)


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    gray = np.full((16, 16), 90, np.uint8)
    img = decode_image(write(tmp_path, "g.jpg", encode(".jpg", gray)))
    assert img.shape == (16, 16, 3)
    assert_colour(img[8, 8], (90, 90, 90), tol=2)


def test_palette_png_is_expanded_to_its_palette_colours(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = png_chunk(b"PLTE", bytes([*RED, *GREEN, *BLUE]))
    img = decode_image(write(tmp_path, "p.png", hand_png(indices, 3, extra=palette)))
    assert img.shape == (2, 3, 3)
    assert [tuple(p) for p in img[0]] == [RED, GREEN, BLUE]
    assert [tuple(p) for p in img[1]] == [BLUE, GREEN, RED]


def test_rgba_png_is_composited_on_white(tmp_path):
    bgra = np.zeros((1, 3, 4), np.uint8)
    bgra[0, :, :3] = (0, 0, 255)  # red in BGR order under every alpha
    bgra[0, :, 3] = (255, 0, 128)  # opaque, fully transparent, half
    img = decode_image(write(tmp_path, "a.png", encode(".png", bgra)))
    assert tuple(img[0, 0]) == RED
    assert tuple(img[0, 1]) == WHITE
    assert_colour(img[0, 2], (255, 127, 127), tol=1)


def test_gray_alpha_png_is_composited_on_white(tmp_path):
    gray_alpha = np.array([[0, 255, 0, 0]], np.uint8)  # black opaque, black transparent
    img = decode_image(write(tmp_path, "la.png", hand_png(gray_alpha, 4)))
    assert tuple(img[0, 0]) == (0, 0, 0)
    assert tuple(img[0, 1]) == WHITE


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_gray_is_divided_by_257_with_rounding(tmp_path, ext):
    gray16 = np.array([[0, 128, 129, 100 * 257, 65535]], np.uint16)
    img = decode_image(write(tmp_path, f"g16{ext}", encode(ext, gray16)))
    assert img.dtype == np.uint8
    assert img[0, :, 0].tolist() == [0, 0, 1, 100, 255]
    assert img[0, :, 1].tolist() == img[0, :, 2].tolist() == img[0, :, 0].tolist()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_is_scaled_and_in_rgb_order(tmp_path, ext):
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[..., 2] = 65535  # red channel full
    bgr16[..., 1] = 50 * 257
    img = decode_image(write(tmp_path, f"c16{ext}", encode(ext, bgr16)))
    assert img.dtype == np.uint8
    assert tuple(img[0, 0]) == (255, 50, 0)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    none = np.zeros((16, 32), np.uint8)
    full = np.full((16, 32), 255, np.uint8)
    left = np.zeros((16, 32), np.uint8)
    left[:, :16] = 255
    right = 255 - left
    # left half: magenta + yellow ink = red; right half: cyan + magenta ink = blue
    data = cmyk_jpeg(cyan=right, magenta=full, yellow=left, black=none)
    img = decode_image(write(tmp_path, "cmyk.jpg", data))
    assert img.shape == (16, 32, 3)
    assert_colour(img[8, 4], RED)
    assert_colour(img[8, 28], BLUE)


def test_bmp_and_webp_decode(tmp_path):
    for ext in (".bmp", ".webp"):
        params = (cv2.IMWRITE_WEBP_QUALITY, 101) if ext == ".webp" else ()
        img = decode_image(write(tmp_path, f"x{ext}", encode(ext, marked_bgr(), params)))
        assert img.shape == (20, 40, 3)
        assert_colour(img[1, 1], RED)


def test_jpeg_with_data_after_its_end_marker_decodes(tmp_path):
    """Phones append trailers (e.g. a motion-photo video) after the JPEG's end marker."""
    data = encode(".jpg", marked_bgr()) + b"\x00" * 100 + b"ftypmp42" + bytes(5000)
    assert decode_image(write(tmp_path, "motion.jpg", data)).shape == (20, 40, 3)


def test_progressive_jpeg_decodes(tmp_path):
    data = encode(".jpg", marked_bgr(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    assert decode_image(write(tmp_path, "prog.jpg", data)).shape == (20, 40, 3)


# --- EXIF orientation --------------------------------------------------------------


def test_exif_orientation_6_rotates_a_jpeg_clockwise(tmp_path):
    data = with_exif_orientation(encode(".jpg", marked_bgr(20, 40)), 6)
    img = decode_image(write(tmp_path, "o6.jpg", data))
    assert img.shape == (40, 20, 3)
    # rotating clockwise moves the top-left corner to the top-right, bottom-left to top-left
    assert_colour(img[2, -3], RED, tol=40)
    assert_colour(img[2, 2], GREEN, tol=40)


def test_exif_orientation_8_rotates_a_jpeg_counter_clockwise(tmp_path):
    data = with_exif_orientation(encode(".jpg", marked_bgr(20, 40)), 8, byte_order=">")
    img = decode_image(write(tmp_path, "o8.jpg", data))
    assert img.shape == (40, 20, 3)
    assert_colour(img[-3, 2], RED, tol=40)
    assert_colour(img[-3, -3], GREEN, tol=40)


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_opencvs_own_handling(tmp_path, orientation, byte_order):
    data = with_exif_orientation(encode(".jpg", marked_bgr()), orientation, byte_order)
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    img = decode_image(write(tmp_path, "o.jpg", data))
    np.testing.assert_array_equal(img, cv2.cvtColor(reference, cv2.COLOR_BGR2RGB))


def test_png_exif_chunk_orientation_is_applied(tmp_path):
    png = encode(".png", marked_bgr(20, 40))
    ihdr_end = 8 + 25
    data = png[:ihdr_end] + png_chunk(b"eXIf", exif_block(6)) + png[ihdr_end:]
    img = decode_image(write(tmp_path, "o6.png", data))
    assert img.shape == (40, 20, 3)
    assert tuple(img[0, -1]) == RED


def test_rgba_png_with_orientation_rotates_alpha_with_colour(tmp_path):
    bgra = np.zeros((20, 40, 4), np.uint8)
    bgra[..., 3] = 255
    bgra[:5, :5, 3] = 0  # transparent top-left corner -> white
    png = encode(".png", bgra)
    data = png[:33] + png_chunk(b"eXIf", exif_block(6)) + png[33:]
    img = decode_image(write(tmp_path, "o6a.png", data))
    assert img.shape == (40, 20, 3)
    assert tuple(img[0, -1]) == WHITE
    assert tuple(img[0, 0]) == (0, 0, 0)


# --- files that do not decode -------------------------------------------------------


def reason(path: Path, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(path, **kwargs)
    return str(info.value)


def test_missing_file_is_reported(tmp_path):
    assert reason(tmp_path / "nope.jpg") == "no such file"


def test_unreadable_file_is_reported_as_permission_denied(tmp_path, monkeypatch):
    # Tests may run as root, where chmod cannot make a file unreadable: simulate the OS error.
    path = write(tmp_path, "locked.jpg", encode(".jpg", marked_bgr()))
    real_open = os.open

    def deny(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    assert reason(path) == "permission denied"


def test_directory_is_reported(tmp_path):
    assert reason(tmp_path) == "is a directory"


def test_zero_byte_file_is_reported_as_empty(tmp_path):
    assert reason(write(tmp_path, "empty.jpg", b"")) == "empty file (0 bytes)"


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = write(tmp_path, "notes.jpg", b"this is not a picture\n" * 10)
    assert reason(path) == "not a decodable image"


@needs_coco
def test_coco_jpeg_cut_in_half_is_truncated(tmp_path):
    data = coco_image()[0].read_bytes()
    path = write(tmp_path, "half.jpg", data[: len(data) // 2])
    assert reason(path) == "truncated or corrupt image data"


def test_jpeg_missing_only_its_end_marker_is_truncated(tmp_path):
    data = encode(".jpg", marked_bgr())
    assert reason(write(tmp_path, "cut.jpg", data[:-2])) == "truncated or corrupt image data"


def test_truncated_progressive_jpeg_is_detected(tmp_path):
    data = encode(".jpg", marked_bgr(64, 64), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    path = write(tmp_path, "prog.jpg", data[: len(data) * 2 // 3])
    assert reason(path) == "truncated or corrupt image data"


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_png_is_detected(tmp_path, keep):
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    data = encode(".png", noise)
    path = write(tmp_path, "cut.png", data[: int(len(data) * keep)])
    assert reason(path) == "truncated or corrupt image data"


def test_truncated_webp_is_detected(tmp_path):
    data = encode(".webp", marked_bgr(), (cv2.IMWRITE_WEBP_QUALITY, 101))
    path = write(tmp_path, "cut.webp", data[: len(data) - 10])
    assert reason(path) == "truncated or corrupt image data"


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
def test_truncation_is_caught_even_where_the_decoder_would_return_a_partial_image(
    tmp_path, monkeypatch, ext
):
    """OpenCV 4.x returns a cut JPEG as a grey-bottomed image with only a warning; the
    structural check must catch truncation whatever the installed decoder does."""
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    params = (cv2.IMWRITE_WEBP_QUALITY, 101) if ext == ".webp" else ()
    data = encode(ext, noise, params)
    path = write(tmp_path, f"cut{ext}", data[: len(data) * 3 // 4])
    lenient = lambda buf, flags: np.full((40, 40, 3), 128, np.uint8)  # noqa: E731
    monkeypatch.setattr(cv2, "imdecode", lenient)
    assert reason(path) == "truncated or corrupt image data"


def test_png_with_corrupt_pixel_data_is_reported(tmp_path):
    rows = np.zeros((4, 12), np.uint8)
    data = hand_png(rows, 2)
    idat = data.index(b"IDAT") + 4
    broken = data[:idat] + b"\x00garbage" + data[idat + 8 :]
    assert reason(write(tmp_path, "bad.png", broken)) == "truncated or corrupt image data"


def test_image_over_the_pixel_limit_is_refused(tmp_path):
    path = write(tmp_path, "big.png", encode(".png", marked_bgr(20, 40)))
    assert reason(path, max_pixels=799) == "image too large: 40x20 exceeds 799 pixels"
    assert decode_image(path, max_pixels=800).shape == (20, 40, 3)


def test_pixel_limit_is_also_checked_for_formats_without_a_header_check(tmp_path):
    path = write(tmp_path, "big.tif", encode(".tif", marked_bgr(20, 40)))
    assert reason(path, max_pixels=100) == "image too large: 40x20 exceeds 100 pixels"


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path):
    """A 100000 x 100000 PNG header with no pixel data: refused for size, not decoded."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    assert reason(write(tmp_path, "bomb.png", data)) == (
        f"image too large: 100000x100000 exceeds {DEFAULT_MAX_PIXELS:,} pixels"
    )


def test_jpeg_header_size_is_checked_before_decoding(tmp_path):
    data = bytearray(encode(".jpg", marked_bgr(20, 40)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    assert reason(write(tmp_path, "bomb.jpg", bytes(data))).startswith(
        "image too large: 60000x60000"
    )


def test_image_with_zero_width_is_refused(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    assert reason(write(tmp_path, "zero.png", data)) == "image has zero width or height"


# --- decode_image_safe ---------------------------------------------------------------


def test_safe_decode_returns_a_failed_item_instead_of_raising(tmp_path):
    path = write(tmp_path, "empty.png", b"")
    assert decode_image_safe(path) == FailedItem(path, "empty file (0 bytes)")


def test_safe_decode_returns_the_image_when_it_decodes(tmp_path):
    path = write(tmp_path, "ok.png", encode(".png", marked_bgr()))
    result = decode_image_safe(path)
    assert isinstance(result, np.ndarray)
    assert result.shape == (20, 40, 3)
