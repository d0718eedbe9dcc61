"""Turn one image file into an RGB uint8 array (H, W, 3), or a `DecodeError` saying why not.

What is read: only a regular file, checked with `stat` before it is opened and again on
the open descriptor (so a FIFO, a device such as /dev/zero, a socket or a file swapped for
one after the input walk is refused, never read), and at most `max_file_bytes(max_pixels)`
bytes of it (see `sources.read_regular_file`).

Formats: JPEG, PNG, WebP, TIFF and BMP. Their size is read from the header *before* any
pixel memory is allocated: by Pillow's header readers for JPEG, BMP and TIFF (its tag
reader, which also takes float RGB TIFFs its image reader refuses), and by the chunk walks
that check PNG and WebP for completeness anyway (Pillow refuses a zero-sized PNG without
saying so, and its WebP reader allocates the whole canvas to read the header). Files in
any other format are refused without being decoded, since their size cannot be checked
first; a few common ones (GIF, HEIF, ...) are named in the reason. EXIF blocks are parsed
by Pillow.

Decoding uses OpenCV with `IMREAD_UNCHANGED`, which keeps 16-bit samples and the alpha
channel but ignores EXIF orientation for JPEG, PNG and WebP: that orientation is read by
Pillow from the header and applied here. OpenCV's TIFF reader applies the TIFF orientation
tag itself. OpenCV's log (where libtiff's errors and OpenCV's own go) is silenced while
it decodes for us: the reason we return says it in one line. (libjpeg's "Corrupt JPEG
data" and libpng's "libpng error" lines are printed by those libraries straight to the
process's stderr, which no log level reaches.)

Choices made for the model's sake, documented once here:

* Alpha is composited on **white**, the way a transparent image looks on a web page or in a
  document, rather than exposing whatever colour sits under fully transparent pixels.
* 16-bit samples become 8-bit by dividing by 257 with rounding, so an 8-bit image widened
  the usual way (v * 257) comes back exactly, and 65535 maps to 255.
* Float samples (float TIFF) are taken as 0..1 when no finite sample exceeds 1.0 and as
  0..255 otherwise; values outside the range are clipped, NaN becomes 0.
* Truncation is detected from the file structure *before* decoding, whatever the installed
  OpenCV does with a cut file (4.x returns a cut JPEG as a grey-bottomed image with only a
  libjpeg warning; 5.x refuses it): the JPEG marker stream must reach its end-of-image
  marker, a PNG its IEND chunk, a WebP must be as long as its RIFF header says and a TIFF
  must hold every strip or tile its first directory points at. Data after the end (phones
  append trailers, e.g. motion-photo videos) is fine.
* Images more than `MAX_ASPECT_RATIO`:1 are refused: Mask R-CNN's resize scales the long
  side down to the model's `max_size`, and a side that rounds to 0 pixels crashes it
  (1x500 crashes the bundled 128-pixel demo model, 1x1400 the COCO models).
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import BmpImagePlugin, Image, JpegImagePlugin, TiffImagePlugin

from mrcnn_cli.config import DEFAULT_MAX_PIXELS
from mrcnn_cli.errors import DecodeError, FailedItem
from mrcnn_cli.names import MISSING
from mrcnn_cli.remote import RemoteError, is_url, read_object
from mrcnn_cli.sources import UnreadableFile, read_regular_file

# The longest side may be at most this many times the shortest. The smallest `max_size`
# among the models we ship is 128 (the demo model): its resize turns W x H into about
# 128 x (128 * H / W) and crashes when that rounds to 0, i.e. beyond 128:1. 100:1 leaves
# room and is far beyond any photograph (a 360-degree panorama is about 6:1).
MAX_ASPECT_RATIO = 100

# File-size limit: an uncompressed image at the pixel limit in the widest layout we decode
# (float32 RGBA, 16 bytes a pixel), plus room for metadata, thumbnails and phone trailers.
MAX_BYTES_PER_PIXEL = 16
FILE_SLACK_BYTES = 64 * 1024 * 1024

TRUNCATED = "truncated or corrupt image data"
NOT_AN_IMAGE = "not a decodable image"
SUPPORTED_FORMATS = "JPEG, PNG, WebP, TIFF, BMP"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# In JPEG entropy-coded data, 0xFF is followed by 0x00 (stuffing), a restart marker
# (D0-D7) or more 0xFF fill bytes; anything else ends the scan. (No `\xff+` here: the
# plain literal prefix lets `re` use a fast byte search, 25x quicker on real photos.)
_JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}
_BMP_INFO_HEADER_SIZES = {struct.pack("<I", n) for n in (12, 40, 52, 56, 64, 108, 124)}
_EXIF_ORIENTATION_TAG = 0x0112
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
_TIFF_STRIP_OFFSETS, _TIFF_STRIP_COUNTS = 273, 279
_TIFF_TILE_OFFSETS, _TIFF_TILE_COUNTS = 324, 325
# Pillow's TIFF tag reader (used for TIFF headers and for every EXIF block) warns about
# each malformed tag of a broken file (all its UserWarnings are of that kind); we report
# such a file in one line of our own instead. A process-wide filter, but only for them.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin$")
_PILLOW_READERS = {
    "jpeg": JpegImagePlugin.JpegImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
}


@dataclass(frozen=True)
class _Header:
    """What the file's structure says before any pixel is decoded."""

    format: str  # "jpeg", "png", "webp", "tiff", "bmp"
    width: int | None = None
    height: int | None = None
    orientation: int = 1  # EXIF orientation, 1..8, still to be applied by us
    complete: bool = True


def max_file_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The largest file `decode_image` reads for a given pixel limit (2.9 GB by default)."""
    return max_pixels * MAX_BYTES_PER_PIXEL + FILE_SLACK_BYTES


def decode_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a C-contiguous RGB uint8 array of shape (H, W, 3).

    Raises `DecodeError` with a short reason (without the path; the caller adds it).
    """
    data = _read_bytes(path, max_file_bytes(max_pixels))
    header = _inspect(data)
    if header.width is not None and header.height is not None:
        _check_size(header.width, header.height, max_pixels)
    if not header.complete or header.width is None:
        raise DecodeError(TRUNCATED)

    img = _imdecode(data)
    if img is None:
        raise DecodeError(TRUNCATED)
    _check_size(img.shape[1], img.shape[0], max_pixels)

    bgr = _to_bgr8(img)
    bgr = _apply_orientation(bgr, header.orientation)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image_safe(
    path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray | FailedItem:
    """Like `decode_image`, but a bad file comes back as a `FailedItem` value, for workers.

    Never raises for a bad file: an error that `decode_image` did not foresee (a bug, or a
    library surprised by hostile bytes) also becomes a `FailedItem`, naming the error.
    """
    try:
        return decode_image(path, max_pixels)
    except DecodeError as exc:
        return FailedItem(_shown(path), str(exc))
    except MemoryError:
        return FailedItem(_shown(path), "not enough memory to decode")
    except Exception as exc:  # noqa: BLE001 - one odd file must not end a long run
        return FailedItem(_shown(path), f"unexpected decode error ({type(exc).__name__}: {exc})")


def _shown(path: Path | str) -> Path | str:
    """The path a failure names: a URL as it is (a `Path` would fold its `//`)."""
    return path if is_url(path) else Path(path)


# --- reading ------------------------------------------------------------------------


def _read_bytes(path: Path | str, max_bytes: int) -> bytes:
    """The whole file, if it is a regular file of at most `max_bytes` bytes (an object
    in a bucket: the whole object, read by the backend, under the same limit)."""
    try:
        if is_url(path):
            data = read_object(str(path), max_bytes)
        else:
            data = read_regular_file(Path(path), max_bytes)
    except RemoteError as exc:
        raise DecodeError(str(exc)) from exc
    except UnreadableFile as exc:
        reason = str(exc)
        raise DecodeError("no such file" if reason == MISSING else reason) from exc
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError("image has zero width or height")
    if width * height > max_pixels:
        raise DecodeError(f"image too large: {width}x{height} exceeds {max_pixels:,} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise DecodeError(
            f"image too narrow: {width}x{height} is beyond the {MAX_ASPECT_RATIO}:1 aspect "
            "ratio the model can take"
        )


# --- header inspection -------------------------------------------------------------


def _inspect(data: bytes) -> _Header:
    """Identify the format; read size, orientation and completeness from the bytes."""
    fmt = _sniff_format(data)
    if fmt is None:
        other = _unsupported_format(data)
        if other is not None:
            raise DecodeError(f"unsupported image format ({other}); supported: {SUPPORTED_FORMATS}")
        raise DecodeError(NOT_AN_IMAGE)
    if fmt == "webp":
        return _inspect_webp(data)  # not Pillow: it allocates the canvas to read the header
    if fmt == "png":
        return _inspect_png(data)  # the chunk walk that checks completeness has it all
    try:
        if fmt == "tiff":
            return _inspect_tiff(data)
        with _PILLOW_READERS[fmt](io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
            exif = im.info.get("exif")
    except Exception:  # noqa: BLE001 - Pillow raises many kinds of error on bad headers
        return _Header(fmt, complete=False)
    complete = _jpeg_complete(data) if fmt == "jpeg" else True
    return _Header(fmt, width, height, _exif_orientation(exif), complete)


def _sniff_format(data: bytes) -> str | None:
    """The formats we decode, by their leading bytes."""
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


def _unsupported_format(data: bytes) -> str | None:
    """Name a few common image formats that we do not decode, for a clearer reason."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIF"
    if data.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG 2000"
    if data.startswith((b"\x00\x00\x00\x0cJXL \r\n\x87\n", b"\xff\x0a")):
        return "JPEG XL"
    if data[:4] == b"8BPS":
        return "Photoshop"
    if len(data) > 2 and data[0:1] == b"P" and data[1] in b"1234567" and data[2] in b" \t\r\n":
        return "PNM"
    return None


def _jpeg_complete(data: bytes) -> bool:
    """Walk the marker segments; the file is whole if they reach the end-of-image marker."""
    pos, end = 2, len(data)
    try:
        while pos + 1 < end:
            if data[pos] != 0xFF:  # junk between segments: libjpeg skips it, so do we
                pos = data.find(b"\xff", pos)
                if pos < 0:
                    return False
                continue
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker == 0xD9:  # end of image
                return True
            if marker in _JPEG_STANDALONE_MARKERS:
                pos += 2
                continue
            (length,) = struct.unpack_from(">H", data, pos + 2)
            if length < 2 or pos + 2 + length > end:
                return False
            pos += 2 + length
            if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
                match = _JPEG_MARKER_AFTER_SCAN.search(data, pos)
                if match is None:
                    return False
                pos = match.start()
    except struct.error:  # a length field runs past the end of the file
        return False
    return False


def _inspect_png(data: bytes) -> _Header:
    """Walk the chunks to IEND; IHDR gives the size (also a zero one, which Pillow's reader
    refuses without saying it), eXIf the orientation wherever it sits (Pillow's header
    read misses one placed after the pixel data)."""
    width = height = exif = None
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunk_end = pos + 12 + length  # length, type, data, CRC
        if chunk_end > end:
            break
        if kind == b"IHDR" and length >= 8:
            width, height = struct.unpack_from(">II", data, pos + 8)
        elif kind == b"eXIf":
            exif = data[pos + 8 : pos + 8 + length]
        elif kind == b"IEND":
            return _Header("png", width, height, _exif_orientation(exif), complete=True)
        pos = chunk_end
    return _Header("png", width, height, _exif_orientation(exif), complete=False)


def _inspect_tiff(data: bytes) -> _Header:
    """The first directory, read by Pillow's TIFF tag reader (which, unlike its image
    reader, also takes float RGB): size, and whether the file holds all the pixel data."""
    fp = io.BytesIO(data)
    head = fp.read(8)
    if head[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: a 16-byte header
        head += fp.read(8)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
    fp.seek(ifd.next)
    ifd.load(fp)
    width, height = ifd.get(_TIFF_WIDTH), ifd.get(_TIFF_HEIGHT)
    offsets = ifd.get(_TIFF_TILE_OFFSETS) or ifd.get(_TIFF_STRIP_OFFSETS) or ()
    counts = ifd.get(_TIFF_TILE_COUNTS) or ifd.get(_TIFF_STRIP_COUNTS) or ()
    offsets = offsets if isinstance(offsets, tuple) else (offsets,)
    counts = counts if isinstance(counts, tuple) else (counts,)
    complete = bool(offsets) and all(o + c <= len(data) for o, c in zip(offsets, counts))
    if not isinstance(width, int) or not isinstance(height, int):
        return _Header("tiff", complete=False)
    return _Header("tiff", width, height, 1, complete)  # OpenCV applies TIFF orientation


def _inspect_webp(data: bytes) -> _Header:
    """RIFF length for completeness; VP8X / VP8L / VP8 for size; EXIF chunk for orientation."""
    try:
        (riff_size,) = struct.unpack_from("<I", data, 4)
    except struct.error:
        return _Header("webp", complete=False)
    complete = len(data) >= 8 + riff_size
    width = height = exif = None
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
            exif = body
        pos += 8 + length + (length & 1)  # chunks are padded to even length
    return _Header("webp", width, height, _exif_orientation(exif), complete)


def _exif_orientation(exif: bytes | None) -> int:
    """The Orientation tag of an EXIF block, read by Pillow; 1 if absent or unreadable."""
    if not exif:
        return 1
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        value = parsed.get(_EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a broken EXIF block just means no orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --- decoding ----------------------------------------------------------------------


class _QuietOpenCV:
    """Silence OpenCV's log while any thread decodes, then restore the caller's level.

    The level is process-wide, so concurrent decodes share one silent period (counted),
    instead of each restoring a level another thread had set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 0

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = cv2.utils.logging.getLogLevel()
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            self._users += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                cv2.utils.logging.setLogLevel(self._saved)


_quiet_opencv = _QuietOpenCV()


def _imdecode(data: bytes) -> np.ndarray | None:
    try:
        with _quiet_opencv:
            return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DecodeError(TRUNCATED) from exc


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any depth, 1-4 channels (OpenCV order) -> 8-bit BGR, alpha composited on white."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype in (np.float16, np.float32, np.float64):
        img = _float_to_uint8(img)
    elif img.dtype != np.uint8:
        raise DecodeError(f"unsupported pixel format ({img.dtype})")

    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels == 3:
        return img
    if channels in (2, 4):  # gray + alpha, or BGRA
        colour = img[:, :, :-1].astype(np.uint16)
        alpha = img[:, :, -1:].astype(np.uint16)
        blended = ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        return cv2.cvtColor(blended, cv2.COLOR_GRAY2BGR) if channels == 2 else blended
    raise DecodeError(f"unsupported number of channels ({channels})")


def _float_to_uint8(img: np.ndarray) -> np.ndarray:
    """0..1 floats (no finite sample above 1.0) or 0..255 floats -> uint8, clipped."""
    img = img.astype(np.float32)
    finite = np.isfinite(img)
    peak = float(img[finite].max()) if finite.any() else 0.0
    scale = 255.0 if peak <= 1.0 else 1.0
    scaled = np.nan_to_num(img * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


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
