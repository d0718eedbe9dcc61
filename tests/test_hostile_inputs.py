"""A hostile-input corpus for the input side (sources + decode), built by the tests.

Every case makes one hostile thing in tmp_path and asserts what happens to it when it is
passed through `collect_sources` and then `decode_image_safe`, the way a run does: either
one failure (one line, whose reason contains the expected text) or a decoded image of the
expected shape. Nothing may raise, hang or read without bound. No binary file is committed:
images are encoded with OpenCV or Pillow, or assembled with struct where a header must lie.

Cases that need a non-root user (a mode-000 file or folder is readable by root) are marked
and skipped under root; they are not counted among the kinds covered.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import COCO_IMAGES
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mrcnn_cli.decode import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    TRUNCATED,
    decode_image,
    decode_image_safe,
    max_file_bytes,
)
from mrcnn_cli.errors import DecodeError, FailedItem
from mrcnn_cli.names import display_name
from mrcnn_cli.sources import collect_sources, max_input_name_bytes

ROOT = os.geteuid() == 0
NAME_LIMIT = max_input_name_bytes()


# --- guards ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A case that hangs (a FIFO opened for reading) fails after 20 s instead of forever."""

    def timeout(signum, frame):
        raise TimeoutError("hostile input hung the test")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- builders -----------------------------------------------------------------------


def encode(ext: str, img: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def noise(height: int = 24, width: int = 32, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def pillow(fmt: str, img: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def tiff_header_only(width: int, height: int, strip: bytes = b"\x00" * 64) -> bytes:
    """A little-endian 8-bit gray TIFF whose one strip is `strip`, whatever size it claims."""
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),  # strip offset, filled in below
        (277, 3, 1),
        (278, 4, height),
        (279, 4, width * height),
    ]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + strip


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\x00" * 16


def webp_header_only(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def with_exif_orientation_jpeg(jpeg: bytes, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    block = b"Exif\x00\x00" + exif.tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block + jpeg[2:]


def cmyk_jpeg() -> bytes:
    cmyk = np.zeros((16, 24, 4), np.uint8)
    cmyk[..., 1] = cmyk[..., 2] = 255  # magenta + yellow ink: red
    return pillow("JPEG", Image.fromarray(cmyk, "CMYK"), quality=95)


def palette_png_with_transparency() -> bytes:
    img = Image.new("P", (6, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.putpixel((0, 0), 1)
    return pillow("PNG", img, transparency=0)  # index 0 (red) fully transparent


def write(root: Path, name: str | bytes, data: bytes) -> Path:
    path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name))))
    path.write_bytes(data)
    return path


def fifo(root: Path, name: str) -> Path:
    path = root / name
    os.mkfifo(path)
    return path


def unix_socket(root: Path, name: str) -> Path:
    path = root / name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the socket file stays
    return path


# --- the corpus -----------------------------------------------------------------------

Expect = str | tuple[int, int, int]  # a reason substring, or a decoded shape


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], list[Path | str]]  # makes the thing; returns the CLI inputs
    expect: Expect
    count: int = 1  # how many outcomes (a link pair is two failures)
    exclude: str | None = None  # an output folder, relative to tmp_path


def _one(name: str | bytes, data: bytes) -> Callable[[Path], list[Path | str]]:
    return lambda root: [write(root, name, data)]


def _in_folder(make: Callable[[Path], object]) -> Callable[[Path], list[Path | str]]:
    def build(root: Path) -> list[Path | str]:
        folder = root / "photos"
        folder.mkdir()
        make(folder)
        return [folder]

    return build


def _links_loop(root: Path) -> None:
    (root / "a.jpg").symlink_to(root / "b.jpg")
    (root / "b.jpg").symlink_to(root / "a.jpg")


def _self_loop(root: Path) -> list[Path | str]:
    (root / "self.jpg").symlink_to(root / "self.jpg")
    return [root / "self.jpg"]


def _dangling(root: Path) -> None:
    (root / "gone.jpg").symlink_to(root / "nowhere.jpg")


def _dir_named_jpg(root: Path) -> list[Path | str]:
    (root / "album.jpg").mkdir()
    return [root / "album.jpg"]


def _list_including_itself(root: Path) -> list[Path | str]:
    (root / "me.txt").write_text("me.txt\n")
    return [root / "me.txt"]


def _list_naming_a_fifo(root: Path) -> list[Path | str]:
    fifo(root, "pipe.jpg")
    (root / "list.txt").write_text("pipe.jpg\n")
    return [root / "list.txt"]


def _list_that_is_a_fifo(root: Path) -> list[Path | str]:
    return [fifo(root, "inputs.txt")]


def _list_with_nul(root: Path) -> list[Path | str]:
    (root / "list.txt").write_bytes(b"bad\x00name.jpg\n")
    return [root / "list.txt"]


def _list_not_utf8(root: Path) -> list[Path | str]:
    (root / "list.txt").write_bytes(b"caf\xe9.jpg\n")
    return [root / "list.txt"]


def _inside_output(root: Path) -> list[Path | str]:
    (root / "photos/results").mkdir(parents=True)
    return [write(root / "photos/results", "overlay.jpg", encode(".jpg", noise()))]


def _output_folder_in_walk(root: Path) -> list[Path | str]:
    (root / "photos/results").mkdir(parents=True)
    write(root / "photos", "a.jpg", encode(".jpg", noise()))
    write(root / "photos/results", "a.jpg", encode(".jpg", noise(8, 8)))
    return [root / "photos"]


def _output_folder_through_a_link(root: Path) -> list[Path | str]:
    (root / "out").mkdir()
    write(root / "out", "old_overlay.jpg", encode(".jpg", noise(8, 8)))
    (root / "photos").mkdir()
    (root / "photos/results").symlink_to(root / "out")  # a link to a folder: not followed
    (root / "photos/shortcut.jpg").symlink_to(root / "out/old_overlay.jpg")  # to a file
    write(root / "photos", "a.jpg", encode(".jpg", noise()))
    return [root / "photos"]


def _glob_through_link_loops(root: Path) -> list[Path | str]:
    (root / "d").mkdir()
    (root / "d/a").symlink_to(root / "d")
    (root / "d/b").symlink_to(root / "d")  # glob.glob's `**` would expand 2**40 paths
    write(root / "d", "x.jpg", encode(".jpg", noise()))
    return [f"{root}/d/**/*.jpg"]


DEEP_TREE = "deep-tree"


def _deep_tree(root: Path) -> list[Path | str]:
    deep = root / DEEP_TREE
    deep.mkdir()
    for _ in range(1100):  # deeper than Python's recursion limit (mkdir(parents) recurses)
        deep = deep / "d"
        deep.mkdir()
    write(deep, "x.png", encode(".png", noise()))
    return [root / DEEP_TREE]


def remove_tree(top: Path) -> None:
    """Like shutil.rmtree, which recurses once a level (pytest's own cleanup of a 1100-level
    tree fails with RecursionError), but with an explicit stack."""
    stack, folders = [top], []
    while stack:
        folder = stack.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


def _swapped_for_a_fifo(root: Path) -> list[Path | str]:
    """Collected as an image, replaced by a FIFO before decoding: decode checks again."""
    path = write(root, "x.jpg", encode(".jpg", noise()))
    return [path, lambda: (path.unlink(), os.mkfifo(path))]


def _sparse_too_big(root: Path) -> list[Path | str]:
    path = root / "huge.jpg"
    with path.open("wb") as f:
        f.truncate(max_file_bytes(DEFAULT_MAX_PIXELS) + 1)  # sparse: no disk used
    return [path]


def _tiff(img: np.ndarray) -> bytes:
    return encode(".tif", img)


def _float_tiff(scale: float) -> bytes:
    ramp = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    return encode(".tif", np.dstack([ramp * scale] * 3))


def _truncated(ext: str, keep: float = 0.5, params: tuple[int, ...] = ()) -> bytes:
    data = encode(ext, noise(64, 64), params)
    return data[: int(len(data) * keep)]


def _bad_crc_png() -> bytes:
    data = bytearray(encode(".png", noise()))
    idat = data.index(b"IDAT")
    (length,) = struct.unpack_from(">I", data, idat - 4)
    data[idat + 4 + length] ^= 0xFF  # first CRC byte of IDAT
    return bytes(data)


def _tiff_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pillow("TIFF", Image.fromarray(noise(10, 30)), exif=exif)


def _webp_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pillow("WEBP", Image.fromarray(noise(10, 30)), exif=exif, lossless=True)


def _png_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pillow("PNG", Image.fromarray(noise(10, 30)), exif=exif)


def _trailing_jpeg() -> bytes:
    return encode(".jpg", noise()) + b"\0" * 999 + b"ftypmp42" + bytes(5000)


def _png16() -> bytes:
    return encode(".png", noise().astype(np.uint16) * 257)


def _bigtiff() -> bytes:
    return pillow("TIFF", Image.fromarray(noise()), big_tiff=True)


def _jpeg_orientation(orientation: int) -> bytes:
    return with_exif_orientation_jpeg(encode(".jpg", noise(10, 30)), orientation)


OUT = "photos/results"
LONG_NAME = "n" * (250 - len(".jpg")) + ".jpg"
NOT_REGULAR_FIFO = "not a regular file (fifo)"

CASES = [
    # --- things that are not regular files, or not files at all
    Case("fifo in a folder", _in_folder(lambda d: fifo(d, "x.jpg")), NOT_REGULAR_FIFO),
    Case("fifo named", lambda r: [fifo(r, "x.jpg")], NOT_REGULAR_FIFO),
    Case("/dev/zero", lambda r: [Path("/dev/zero")], "not a regular file (character device)"),
    Case("/dev/null", lambda r: [Path("/dev/null")], "not a regular file (character device)"),
    Case("socket in a folder", _in_folder(lambda d: unix_socket(d, "s.png")), "(socket)"),
    Case("directory named .jpg", _dir_named_jpg, "no images found in folder"),
    Case("/proc pseudo-file (size 0)", lambda r: [Path("/proc/self/status")], "not a decodable"),
    Case("sparse file over the byte limit", _sparse_too_big, "file too large"),
    Case("image swapped for a fifo after collection", _swapped_for_a_fifo, NOT_REGULAR_FIFO),
    # --- symbolic links
    Case("symlink loop a->b->a", _in_folder(_links_loop), "symbolic link loop", count=2),
    Case("symlink to itself", _self_loop, "symbolic link loop"),
    Case("dangling symlink", _in_folder(_dangling), "broken symbolic link"),
    Case("glob ** through two link loops", _glob_through_link_loops, (24, 32, 3)),
    Case("folder 1100 levels deep", _deep_tree, (24, 32, 3)),
    # --- list files
    Case("list file including itself", _list_including_itself, "list file includes itself"),
    Case("list naming a fifo", _list_naming_a_fifo, NOT_REGULAR_FIFO),
    Case("list file that is a fifo", _list_that_is_a_fifo, NOT_REGULAR_FIFO),
    Case("list line with a NUL", _list_with_nul, "contains a NUL character"),
    Case("list file not UTF-8", _list_not_utf8, "not UTF-8 text"),
    # --- names
    Case("non-UTF-8 name", _one(b"caf\xe9\xff.jpg", encode(".jpg", noise())), (24, 32, 3)),
    Case("newline in name", _one("two\nlines.png", encode(".png", noise())), (24, 32, 3)),
    Case("escape codes in name", _one("\x1b[2Jx.png", encode(".png", noise())), (24, 32, 3)),
    Case("250-byte name", _one(LONG_NAME, encode(".jpg", noise())), "file name too long"),
    # --- outputs as inputs
    Case("image in the output folder", _inside_output, "inside the output folder", 1, OUT),
    Case("output folder in a walked folder", _output_folder_in_walk, (24, 32, 3), 1, OUT),
    Case("output folder reached by links", _output_folder_through_a_link, (24, 32, 3), 1, "out"),
    # --- not images, or not whole
    Case("zero-byte file", _one("empty.jpg", b""), "empty file (0 bytes)"),
    Case("text named .jpg", _one("notes.jpg", b"shopping list\n" * 20), "not a decodable image"),
    Case("HTML named .png", _one("page.png", b"<!doctype html><html></html>"), "not a decodable"),
    Case("GIF", _one("anim.gif", pillow("GIF", Image.fromarray(noise()))), "(GIF)"),
    Case("HEIF brand", _one("x.jpg", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40), "(HEIF)"),
    Case("truncated JPEG", _one("cut.jpg", _truncated(".jpg")), TRUNCATED),
    Case("truncated PNG", _one("cut.png", _truncated(".png")), TRUNCATED),
    Case("truncated WebP", _one("cut.webp", _truncated(".webp", 0.8)), TRUNCATED),
    Case("truncated TIFF", _one("cut.tif", _truncated(".tif")), TRUNCATED),
    Case("truncated BMP", _one("cut.bmp", _truncated(".bmp")), TRUNCATED),
    Case("PNG with a bad CRC", _one("crc.png", _bad_crc_png()), TRUNCATED),
    Case("JPEG with trailing data", _one("t.jpg", _trailing_jpeg()), (24, 32, 3)),
    # --- size bombs: refused from the header, before any pixel memory
    Case("TIFF bomb header", _one("bomb.tif", tiff_header_only(30000, 30000)), "30000x30000"),
    Case("PNG bomb header", _one("bomb.png", png_header_only(60000, 60000)), "60000x60000"),
    Case("BMP bomb header", _one("bomb.bmp", bmp_header_only(50000, 50000)), "50000x50000"),
    Case("WebP bomb header", _one("bomb.webp", webp_header_only(16383, 16383)), "16383x16383"),
    Case("zero-width PNG", _one("zero.png", png_header_only(0, 10)), "zero width or height"),
    # --- shapes the model cannot take
    Case("1x500 image", _one("thin.png", encode(".png", noise(1, 500))), "image too narrow"),
    Case("2x3000 image", _one("thin.png", encode(".png", noise(2, 3000))), "image too narrow"),
    Case("3000x2 TIFF", _one("tall.tif", _tiff(noise(3000, 2))), "image too narrow"),
    Case("1x100 image (at the limit)", _one("ok.png", encode(".png", noise(1, 100))), (1, 100, 3)),
    # --- unusual but valid images
    Case("16-bit PNG", _one("d.png", _png16()), (24, 32, 3)),
    Case("float TIFF 0..1", _one("f1.tif", _float_tiff(1.0)), (24, 32, 3)),
    Case("float TIFF 0..255", _one("f255.tif", _float_tiff(255.0)), (24, 32, 3)),
    Case("BigTIFF", _one("big.tif", _bigtiff()), (24, 32, 3)),
    Case("CMYK JPEG", _one("cmyk.jpg", cmyk_jpeg()), (16, 24, 3)),
    Case(
        "palette PNG with transparency", _one("p.png", palette_png_with_transparency()), (4, 6, 3)
    ),
    Case("JPEG EXIF orientation 6", _one("o.jpg", _jpeg_orientation(6)), (30, 10, 3)),
    Case("PNG EXIF orientation 8", _one("o.png", _png_orientation(8)), (30, 10, 3)),
    Case("WebP EXIF orientation 5", _one("o.webp", _webp_orientation(5)), (30, 10, 3)),
    Case("TIFF orientation 6", _one("o.tif", _tiff_orientation(6)), (30, 10, 3)),
    Case("1x1 image", _one("dot.png", encode(".png", noise(1, 1))), (1, 1, 3)),
]


def run_inputs(tmp_path: Path, case: Case) -> list[FailedItem | np.ndarray]:
    """What a run does with the case's inputs: collect, then decode each item."""
    built = case.build(tmp_path)
    inputs = [b for b in built if not callable(b)]
    exclude = [tmp_path / case.exclude] if case.exclude else []
    items, failed = collect_sources(inputs, exclude=exclude)
    for item in items:  # any name can be shown on one line of UTF-8
        shown = display_name(item.path)
        assert "\n" not in shown and shown.isprintable()
        shown.encode("utf-8")
    for step in built:  # what happens between collection and decoding
        if callable(step):
            step()
    return [*failed, *(decode_image_safe(item.path) for item in items)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(tmp_path, case):
    try:
        outcomes = run_inputs(tmp_path, case)
    finally:
        if (tmp_path / DEEP_TREE).exists():
            remove_tree(tmp_path / DEEP_TREE)
    assert len(outcomes) == case.count, outcomes
    for outcome in outcomes:
        if isinstance(case.expect, str):
            assert isinstance(outcome, FailedItem), outcome.shape
            assert case.expect in outcome.reason
            line = json.dumps(
                {"path": outcome.display_path, "reason": outcome.display_reason},
                ensure_ascii=False,
            )
            assert "\n" not in line
            line.encode("utf-8")  # a JSONL failures report can always be written
        else:
            assert isinstance(outcome, np.ndarray), outcome
            assert outcome.shape == case.expect
            assert outcome.dtype == np.uint8


def test_the_corpus_covers_at_least_30_kinds():
    assert len(CASES) >= 30


# --- the decode side checks again, whatever sources let through ------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda r: fifo(r, "x.jpg"), NOT_REGULAR_FIFO),
        (lambda r: unix_socket(r, "x.jpg"), "not a regular file (socket)"),
        (lambda r: Path("/dev/zero"), "not a regular file (character device)"),
        (lambda r: (_self_loop(r), r / "self.jpg")[1], "symbolic link loop"),
        (lambda r: (_dangling(r), r / "gone.jpg")[1], "broken symbolic link"),
        (lambda r: _dir_named_jpg(r)[0], "is a directory"),
    ],
    ids=["fifo", "socket", "/dev/zero", "link loop", "dangling link", "directory"],
)
def test_decode_refuses_what_is_not_a_regular_file(tmp_path, make, reason):
    path = make(tmp_path)
    result = decode_image_safe(path, max_pixels=1000)  # and a small byte limit, to be safe
    assert result == FailedItem(path, reason)


def test_a_file_growing_past_the_limit_while_read_is_refused(tmp_path):
    """/proc files say they hold 0 bytes; reading stops at the limit all the same."""
    from mrcnn_cli.sources import UnreadableFile, read_regular_file

    path = write(tmp_path, "grows.jpg", b"")
    with open(path, "ab") as f:  # not there at stat time: the bounded read is the guard
        f.write(b"x" * 5000)
    assert read_regular_file(path, 5000) == b"x" * 5000
    with pytest.raises(UnreadableFile, match="file too large"):
        read_regular_file(path, 4999)


@pytest.mark.skipif(ROOT, reason="root reads mode-000 files; not counted as covered")
def test_unreadable_file_as_a_normal_user(tmp_path):
    path = write(tmp_path, "locked.jpg", encode(".jpg", noise()))
    path.chmod(0)
    assert decode_image_safe(path) == FailedItem(path, "permission denied")


@pytest.mark.skipif(ROOT, reason="root lists mode-000 folders; not counted as covered")
def test_unreadable_folder_as_a_normal_user(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    write(locked, "a.jpg", encode(".jpg", noise()))
    locked.chmod(0)
    try:
        _, failed = collect_sources([tmp_path])
    finally:
        locked.chmod(0o755)
    assert failed == [FailedItem(locked, "cannot read folder: permission denied")]


# --- what the values mean -------------------------------------------------------------


def test_float_tiff_ranges_map_to_the_same_8_bit_image(tmp_path):
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    unit = decode_image(write(tmp_path, "a.tif", encode(".tif", ramp)))
    wide = decode_image(write(tmp_path, "b.tif", encode(".tif", ramp * 255)))
    np.testing.assert_array_equal(unit, wide)
    assert unit[:, :, 0].ravel().tolist() == list(range(256))


def test_palette_transparency_is_composited_on_white(tmp_path):
    img = decode_image(write(tmp_path, "p.png", palette_png_with_transparency()))
    assert tuple(img[0, 0]) == (0, 0, 255)  # the one opaque blue pixel
    assert tuple(img[1, 1]) == (255, 255, 255)  # transparent red shows white


def test_cmyk_jpeg_colours(tmp_path):
    img = decode_image(write(tmp_path, "cmyk.jpg", cmyk_jpeg()))
    assert np.abs(img[8, 12].astype(int) - (255, 0, 0)).max() <= 12


@pytest.mark.parametrize("build", [_tiff_orientation, _webp_orientation, _png_orientation])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows_transpose(tmp_path, build, orientation):
    """Every orientation, in every format that carries one, as Pillow's exif_transpose."""
    from PIL import ImageOps

    data = build(orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(write(tmp_path, "o.img", data)), expected)


def test_no_opencv_log_lines_for_truncated_tiff_and_bmp(tmp_path, capfd):
    from mrcnn_cli.decode import _imdecode

    for ext in (".tif", ".bmp"):
        assert decode_image_safe(write(tmp_path, f"cut{ext}", _truncated(ext))).reason == TRUNCATED
        # straight into OpenCV, past our structural checks: its log stays quiet too
        assert _imdecode(_truncated(ext)) is None
    assert capfd.readouterr().err == ""


# --- the aspect-ratio rule, shown on the model -----------------------------------------


@pytest.fixture(scope="module")
def demo_model():
    from mrcnn_cli.segmenter import Segmenter

    return Segmenter("demo", device="cpu")


def test_the_model_crashes_beyond_the_aspect_limit_and_runs_within_it(tmp_path, demo_model):
    """The demo model (max_size 128) crashes once the short side resizes to 0 pixels; the
    decode rule refuses those images first and lets everything that runs through."""
    for height, width in [(1, 500), (2, 3000), (500, 1), (8, 2000)]:
        with pytest.raises(RuntimeError, match="sizes should be greater than 0"):
            demo_model._forward([noise(height, width)])
        path = write(tmp_path, "x.png", encode(".png", noise(height, width)))
        assert "image too narrow" in decode_image_safe(path).reason
    for height, width in [(1, MAX_ASPECT_RATIO), (MAX_ASPECT_RATIO, 1), (2, 200), (1, 1)]:
        img = decode_image(write(tmp_path, "y.png", encode(".png", noise(height, width))))
        dets = demo_model(img)
        assert dets.masks.shape[1:] == (height, width)


# --- fuzz: no exception but DecodeError escapes decode_image ---------------------------


def _seed_files() -> dict[str, bytes]:
    real = sorted(COCO_IMAGES.glob("*.jpg"))  # a camera JPEG (EXIF, markers) when present
    small = noise(16, 16)
    return {
        "jpeg": real[0].read_bytes() if real else encode(".jpg", noise(64, 64)),
        "png": encode(".png", small),
        "tiff": encode(".tif", small),
        "webp": encode(".webp", small),
        "bmp": encode(".bmp", small),
    }


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    head = min(len(data), 512)  # mostly the header, where the parsers live
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(0, head - 1)))
        if action == "flip" and data:
            data[pos % len(data)] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input.img"


def _only_decode_errors(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        img = decode_image(path, max_pixels=4_000_000)
    except DecodeError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=4096))
def test_fuzz_random_bytes(fuzz_path, data):
    _only_decode_errors(fuzz_path, data)


@settings(max_examples=300, deadline=None)
@given(data=mutated())
def test_fuzz_mutated_real_headers(fuzz_path, data):
    _only_decode_errors(fuzz_path, data)


MAGIC = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"BM",
]


@settings(max_examples=100, deadline=None)
@given(magic=st.sampled_from(MAGIC), rest=st.binary(max_size=512))
def test_fuzz_known_magic_then_garbage(fuzz_path, magic, rest):
    _only_decode_errors(fuzz_path, magic + rest)
