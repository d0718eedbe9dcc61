"""Reading a video: PyAV decode to upright RGB frames, one at a time, in a thread.

A cut or corrupt file yields the frames that decode; `DecodeReport` says what was lost.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from mrcnn_cli.errors import DecodeError

_FALLBACK_FPS = Fraction(30)


@dataclass(frozen=True)
class FrameWindow:
    """Which frames to read: [start, end) seconds from the start of the video, at most max."""

    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says about the first video stream."""

    width: int
    height: int
    fps: Fraction
    frames: int | None  # from the header; None where the container does not store it
    duration: float | None  # seconds
    audio_codec: str | None
    # True when `duration` is the container's (the longest stream's, maybe the audio's)
    # because the video stream has none of its own: then it is only a rough bound.
    duration_is_container: bool = False

    def expected_frames(self, window: FrameWindow) -> int:
        """Frames a run over `window` should produce (for the progress bar; an estimate)."""
        duration = self.duration
        if duration is None and self.frames:
            duration = self.frames / float(self.fps)
        if window.start == 0 and window.end is None and self.frames:
            n = self.frames
        elif duration is None:
            n = 0
        else:
            stop = duration if window.end is None else min(window.end, duration)
            n = max(0, math.ceil((stop - window.start) * float(self.fps) - 1e-6))
        return min(n, window.max_frames) if window.max_frames else n


@dataclass
class Frame:
    """One decoded frame: `index` is its position in the output, `time` its second in the video."""

    index: int
    time: float
    image: np.ndarray  # RGB uint8 HxWx3, upright
    source: str | None = None  # the image file's name, for a folder of frames


@dataclass
class DecodeReport:
    """Filled in by the reader: what went wrong, if anything, once it has finished."""

    frames: int = 0
    last_time: float | None = None
    problem: str | None = None
    color: dict[str, int] = field(default_factory=dict)  # tags copied to the output stream


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise DecodeError("no such file")
    if path.is_dir():
        raise DecodeError("is a directory")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except PermissionError as exc:
        raise DecodeError("permission denied") from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a readable video ({_ffmpeg_reason(exc)})") from exc


def _ffmpeg_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise DecodeError("no video stream in the file")
    return container.streams.video[0]


def _info(container: av.container.InputContainer) -> VideoInfo:
    stream = _video_stream(container)
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        raise DecodeError("the video stream has no frame size")
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate or _FALLBACK_FPS
    from_container = not (stream.duration and stream.time_base)
    if not from_container:
        duration: float | None = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = None
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    frames = stream.frames or None
    return VideoInfo(ctx.width, ctx.height, Fraction(fps), frames, duration, audio, from_container)


def probe_video(path: Path) -> VideoInfo:
    """Read the header only; raises DecodeError with a short reason for a bad file."""
    with _open_input(path) as container:
        return _info(container)


def _raw_frames(
    container: av.container.InputContainer, stream: av.VideoStream, report: DecodeReport
) -> Iterator[av.VideoFrame]:
    """Every frame that decodes; a bad packet is skipped, a failing demuxer ends the video."""
    bad_packets = 0
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.FFmpegError:
                bad_packets += 1
    except av.FFmpegError as exc:
        report.problem = f"the file stops being readable ({_ffmpeg_reason(exc)})"
        try:
            yield from stream.codec_context.decode(None)
        except av.FFmpegError:
            pass
    if bad_packets and report.problem is None:
        report.problem = f"{bad_packets} corrupt packet(s) could not be decoded"


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation (degrees counterclockwise) phones store instead of
    rotating pixels, so the model sees people upright; the output is written upright."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def _seek(container: av.container.InputContainer, stream: av.VideoStream, start: float) -> None:
    """Jump to the keyframe before `start`; frames before `start` are then dropped."""
    offset = int(start / stream.time_base) + (stream.start_time or 0)
    try:
        container.seek(offset, stream=stream, backward=True)
    except av.FFmpegError:
        container.seek(0, stream=stream, backward=True)


def decode_frames(path: Path, window: FrameWindow, report: DecodeReport) -> Iterator[Frame]:
    """Frames in `window` as upright RGB, one at a time (never the whole video in memory).

    After the last frame, `report` says whether the video ended early (cut or corrupt
    file) rather than at its end, `window.end` or `window.max_frames`.
    """
    with _open_input(path) as container:
        info = _info(container)
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        if window.start > 0:
            _seek(container, stream, window.start)
        origin = stream.start_time or 0
        period = 1.0 / float(info.fps)
        size: tuple[int, int] | None = None
        rotation = 0
        for raw in _raw_frames(container, stream, report):
            if raw.pts is not None:
                time = float((raw.pts - origin) * stream.time_base)
            else:
                time = window.start if report.last_time is None else report.last_time + period
            if time < window.start - 1e-6:
                continue
            if window.end is not None and time >= window.end - 1e-6:
                return
            if size is None:  # a stream that changes size mid-way is scaled to its first size
                size, rotation = (raw.width, raw.height), raw.rotation
                report.color = _color_tags(raw)
            rgb = raw.to_ndarray(
                format="rgb24", width=size[0], height=size[1], src_color_range=raw.color_range
            )
            yield Frame(report.frames, time, _upright(rgb, rotation))
            report.frames += 1
            report.last_time = time
            if window.max_frames is not None and report.frames >= window.max_frames:
                return
        _check_complete(report, info, window, period)


def _color_tags(raw: av.VideoFrame) -> dict[str, int]:
    """The colour matrix the source uses: the output is encoded with and tagged as it."""
    if raw.colorspace in (0, 2):  # RGB / unspecified: swscale's default (BT.601) both ways
        return {}
    return {"colorspace": int(raw.colorspace)}


def _check_complete(
    report: DecodeReport, info: VideoInfo, window: FrameWindow, period: float
) -> None:
    if info.duration is None:
        return
    stop = info.duration if window.end is None else min(window.end, info.duration)
    reached = window.start if report.last_time is None else report.last_time + period
    slack = 1.5 * period + (1.0 if info.duration_is_container else 0.0)
    if reached < stop - slack:
        cause = report.problem or "truncated or corrupt file"
        report.problem = (
            f"{cause}: decoded {report.frames} frame(s) up to {reached:.2f} s of {stop:.2f} s; "
            "the rest could not be read"
        )


_END = object()

Decode = Callable[[Path, FrameWindow, DecodeReport], Iterable[Frame]]


class FrameReader:
    """`decode` (`decode_frames`, or another source of frames such as a folder's) in a
    background thread, at most `lookahead` frames ahead."""

    def __init__(
        self,
        path: Path,
        window: FrameWindow,
        lookahead: int,
        report: DecodeReport,
        decode: Decode = decode_frames,
    ) -> None:
        self.report = report
        self._args = (path, window)
        self._decode = decode
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=lookahead)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="video-decode", daemon=True)

    def __enter__(self) -> FrameReader:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put() waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._decode(*self._args, self.report):
                if not self._put(frame):
                    return
        except av.FFmpegError as exc:
            self._error = DecodeError(f"decoding failed ({_ffmpeg_reason(exc)})")
        except BaseException as exc:  # handed to the consumer thread, raised there
            self._error = exc
        self._put(_END)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item
