"""Turn one image file into an RGB uint8 array (H, W, 3), or a `DecodeError` saying why not.

Decoding uses OpenCV on bytes read by Python (so paths with any characters work) with
`IMREAD_UNCHANGED`, which keeps 16-bit samples and the alpha channel but ignores EXIF
orientation. Orientation is therefore read here, from the file's own bytes, for JPEG,
PNG (eXIf chunk) and WebP; OpenCV's TIFF reader already applies the TIFF orientation tag.

Choices made for the model's sake, documented once here:

* Alpha is composited on **white**, the way a transparent image looks on a web page or in a
  document, rather than exposing whatever colour sits under fully transparent pixels.
* 16-bit samples become 8-bit by dividing by 257 with rounding, so an 8-bit image widened
  the usual way (v * 257) comes back exactly, and 65535 maps to 255.
* Truncation is detected from the file structure *before* decoding, whatever the installed
  OpenCV does with a cut file (4.x returns a cut JPEG as a grey-bottomed image with only a
  libjpeg warning; 5.x refuses it): the JPEG marker stream must reach its end-of-image
  marker, a PNG its IEND chunk, and a WebP must be as long as its RIFF header says.
  Data after the end (phones append trailers, e.g. motion-photo videos) is fine.
* The pixel limit is checked from the header (JPEG, PNG, WebP, BMP) before any pixel memory
  is allocated, and again after decoding for every other format.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mrcnn_cli.errors import DecodeError, FailedItem

# Same default as Pillow's decompression-bomb limit: about 13k x 13k.
DEFAULT_MAX_PIXELS = 178_956_970

TRUNCATED = "truncated or corrupt image data"
NOT_AN_IMAGE = "not a decodable image"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# In JPEG entropy-coded data, 0xFF is followed by 0x00 (stuffing), a restart marker
# (D0-D7) or more 0xFF fill bytes; anything else ends the scan. (No `\xff+` here: the
# plain literal prefix lets `re` use a fast byte search, 25x quicker on real photos.)
_JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}
_EXIF_ORIENTATION_TAG = 0x0112
_BMP_INFO_HEADER_SIZES = {struct.pack("<I", n) for n in (12, 40, 52, 56, 64, 108, 124)}


@dataclass(frozen=True)
class _Header:
    """What the file's structure says before any pixel is decoded."""

    format: str | None = None  # "jpeg", "png", "webp", "tiff", "bmp"; None if unknown
    width: int | None = None
    height: int | None = None
    orientation: int = 1  # EXIF orientation, 1..8, still to be applied by us
    complete: bool = True


def decode_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a C-contiguous RGB uint8 array of shape (H, W, 3).

    Raises `DecodeError` with a short reason (without the path; the caller adds it).
    """
    data = _read_bytes(Path(path))
    header = _inspect(data)
    if header.width is not None and header.height is not None:
        _check_size(header.width, header.height, max_pixels)
    if not header.complete:
        raise DecodeError(TRUNCATED)

    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DecodeError(TRUNCATED if header.format else NOT_AN_IMAGE) from exc
    if img is None:
        raise DecodeError(TRUNCATED if header.format else NOT_AN_IMAGE)
    _check_size(img.shape[1], img.shape[0], max_pixels)

    bgr = _to_bgr8(img)
    bgr = _apply_orientation(bgr, header.orientation)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image_safe(
    path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray | FailedItem:
    """Like `decode_image`, but a bad file comes back as a `FailedItem` value, for workers."""
    try:
        return decode_image(path, max_pixels)
    except DecodeError as exc:
        return FailedItem(Path(path), str(exc))
    except MemoryError:
        return FailedItem(Path(path), "not enough memory to decode")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DecodeError("no such file") from exc
    except PermissionError as exc:
        raise DecodeError("permission denied") from exc
    except IsADirectoryError as exc:
        raise DecodeError("is a directory") from exc
    except OSError as exc:
        raise DecodeError(f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError("image has zero width or height")
    if width * height > max_pixels:
        raise DecodeError(f"image too large: {width}x{height} exceeds {max_pixels:,} pixels")


# --- header inspection -------------------------------------------------------------


def _inspect(data: bytes) -> _Header:
    """Identify the format and read size, orientation and completeness from the bytes."""
    fmt = _sniff_format(data)
    try:
        if fmt == "jpeg":
            return _inspect_jpeg(data)
        if fmt == "png":
            return _inspect_png(data)
        if fmt == "webp":
            return _inspect_webp(data)
        if fmt == "bmp":
            return _inspect_bmp(data)
    except struct.error:  # a header field runs past the end of the file
        return _Header(fmt, complete=False)
    return _Header(fmt)  # TIFF: OpenCV's reader applies its orientation tag itself


def _sniff_format(data: bytes) -> str | None:
    """The formats whose structure we check; others are left to OpenCV to recognise."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:2] == b"BM" and data[14:18] in _BMP_INFO_HEADER_SIZES:
        return "bmp"
    return None


def _inspect_jpeg(data: bytes) -> _Header:
    """Walk the marker segments to the end-of-image marker, noting SOF size and EXIF."""
    width = height = None
    orientation = 1
    pos, end = 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:  # junk between segments: libjpeg skips it, so do we
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            return _Header("jpeg", width, height, orientation, complete=True)
        if marker in _JPEG_STANDALONE_MARKERS:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment_end = pos + 2 + length
        if length < 2 or segment_end > end:
            break
        body = data[pos + 4 : segment_end]
        if marker in _JPEG_SOF_MARKERS and width is None:
            height, width = struct.unpack_from(">HH", body, 1)
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(body[6:])
        pos = segment_end
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            match = _JPEG_MARKER_AFTER_SCAN.search(data, pos)
            if match is None:
                break
            pos = match.start()
    return _Header("jpeg", width, height, orientation, complete=False)


def _inspect_png(data: bytes) -> _Header:
    """Walk the chunks to IEND; IHDR gives the size, eXIf the orientation."""
    width = height = None
    orientation = 1
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunk_end = pos + 12 + length  # length, type, data, CRC
        if chunk_end > end:
            break
        if kind == b"IHDR":
            width, height = struct.unpack_from(">II", data, pos + 8)
        elif kind == b"eXIf":
            orientation = _exif_orientation(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            return _Header("png", width, height, orientation, complete=True)
        pos = chunk_end
    return _Header("png", width, height, orientation, complete=False)


def _inspect_webp(data: bytes) -> _Header:
    """RIFF length for completeness; VP8X / VP8L / VP8 for size; EXIF chunk for orientation."""
    (riff_size,) = struct.unpack_from("<I", data, 4)
    complete = len(data) >= 8 + riff_size
    width = height = None
    orientation = 1
    pos, end = 12, min(len(data), 8 + riff_size)
    while pos + 8 <= end:
        kind, length = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"VP8X" and len(body) >= 10:
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
        elif kind == b"VP8L" and width is None and len(body) >= 5:
            (bits,) = struct.unpack_from("<I", body, 1)
            width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        elif kind == b"VP8 " and width is None and len(body) >= 10:
            w, h = struct.unpack_from("<HH", body, 6)
            width, height = w & 0x3FFF, h & 0x3FFF
        elif kind == b"EXIF":
            orientation = _exif_orientation(body.removeprefix(b"Exif\x00\x00"))
        pos += 8 + length + (length & 1)  # chunks are padded to even length
    return _Header("webp", width, height, orientation, complete)


def _inspect_bmp(data: bytes) -> _Header:
    (info_size,) = struct.unpack_from("<I", data, 14)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return _Header("bmp", abs(width), abs(height))  # negative height means top-down rows


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag from IFD0 of a TIFF-structured EXIF block; 1 if absent or bad."""
    if tiff[:2] == b"II":
        order = "<"
    elif tiff[:2] == b"MM":
        order = ">"
    else:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind = struct.unpack_from(order + "HH", tiff, ifd + 2 + 12 * i)
            if tag == _EXIF_ORIENTATION_TAG and kind == 3:  # SHORT
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


# --- pixel conversion --------------------------------------------------------------


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any depth, 1/3/4 channels (OpenCV order) -> 8-bit BGR, alpha composited on white."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):  # e.g. float TIFF, assumed in [0, 1]
        img = np.clip(np.nan_to_num(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DecodeError(f"unsupported pixel format ({img.dtype})")

    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels == 3:
        return img
    if channels == 4:
        colour = img[:, :, :3].astype(np.uint16)
        alpha = img[:, :, 3:].astype(np.uint16)
        blended = (colour * alpha + 255 * (255 - alpha) + 127) // 255
        return blended.astype(np.uint8)
    raise DecodeError(f"unsupported number of channels ({channels})")


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Undo EXIF orientation so that row 0 is the top of the picture as shot."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img
