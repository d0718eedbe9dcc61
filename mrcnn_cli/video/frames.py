"""A folder of image files read as one clip: `mrcnn video frames/ --fps 10`.

Cameras and datasets (MOTChallenge's `img1/`) store clips as numbered images. The
frames are the folder's own image files (not its subfolders'), hidden files left out,
in natural name order (`frame_2` before `frame_10`), timed `position / fps` seconds.

Choices, documented in the README:

* A frame whose size differs from the first readable frame's is scaled to that size
  (as a video stream that changes size mid-way is), so boxes, masks and the MP4 share
  one frame size.
* A frame that cannot be read is left out and the clip goes on; the video then counts
  as failed with one line naming the first such frame (as a cut video file does), so
  the exit code says so and a rerun does it again. Later frames keep their times, so the
  MP4 holds the frame before the gap; frame numbers (MOT, COCO) count the frames read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from mrcnn_cli.decode import decode_image
from mrcnn_cli.errors import DecodeError
from mrcnn_cli.sources import IMAGE_EXTS, natural_path_key
from mrcnn_cli.video.reader import DecodeReport, Frame, FrameWindow, VideoInfo

FOLDER_FPS = 30  # frames/s of a folder of frames when --fps is not given


def frame_files(folder: Path) -> list[Path]:
    """The folder's image files in natural name order (hidden files and folders left out)."""
    try:
        with os.scandir(folder) as it:
            names = [
                e.name
                for e in it
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS
                and not e.is_dir()
            ]
    except OSError as exc:
        raise DecodeError(f"cannot read folder ({exc.strerror or exc})") from exc
    names.sort(key=lambda name: natural_path_key(PurePosixPath(name)))
    return [folder / name for name in names]


def frames_stamp(folder: Path) -> list[list[object]]:
    """Name, size and mtime of every frame: a changed, added or removed frame redoes the clip."""
    stamp: list[list[object]] = []
    for path in frame_files(folder):
        try:
            st = path.stat()
            stamp.append([path.name, st.st_size, st.st_mtime_ns])
        except OSError:
            stamp.append([path.name, None, None])
    return stamp


def _fps(fps: float | None) -> Fraction:
    return Fraction(fps if fps is not None else FOLDER_FPS).limit_denominator(1001)


def probe_frames(folder: Path, fps: float | None = None) -> VideoInfo:
    """Size (of the first frame that reads), frame count and duration of a folder of frames."""
    files = frame_files(folder)
    if not files:
        raise DecodeError("no image frames in the folder")
    first_error = ""
    for path in files:
        try:
            height, width = decode_image(path).shape[:2]
            break
        except DecodeError as exc:
            first_error = first_error or f"{path.name}: {exc}"
    else:
        raise DecodeError(f"none of the {len(files)} frames can be read ({first_error})")
    rate = _fps(fps)
    return VideoInfo(width, height, rate, len(files), len(files) / float(rate), None)


def read_folder_frames(
    folder: Path, window: FrameWindow, report: DecodeReport, fps: float | None = None
) -> Iterator[Frame]:
    """The folder's frames in `window` as RGB, one at a time, like `decode_frames`."""
    period = 1.0 / float(_fps(fps))
    size: tuple[int, int] | None = None
    unreadable: list[str] = []
    for position, path in enumerate(frame_files(folder)):
        time = position * period
        if time < window.start - 1e-6:
            continue
        if window.end is not None and time >= window.end - 1e-6:
            break
        try:
            image = decode_image(path)
        except DecodeError as exc:
            unreadable.append(f"{path.name} ({exc})")
            continue
        if size is None:
            size = image.shape[1], image.shape[0]
        elif (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        yield Frame(report.frames, time, np.ascontiguousarray(image), path.name)
        report.frames += 1
        report.last_time = time
        if window.max_frames is not None and report.frames >= window.max_frames:
            break
    if unreadable:
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        report.problem = f"unreadable frame left out: {unreadable[0]}{more}"
