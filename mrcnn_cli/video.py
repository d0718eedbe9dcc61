"""`mrcnn video`: Mask R-CNN on the frames of a video, written back as an annotated MP4.

    reader thread: PyAV decode -> upright RGB frames        (bounded queue)
    main thread:   batches of keyed frames -> inference.predict  (the same call as images)
    writer thread: overlay -> H.264 encode + audio copy, mask PNGs, COCO (bounded queue)

With `--stride N` only every Nth frame goes through the model and the frames between
reuse the last prediction, so the output still has every frame. Frames exist only
between the reader and the writer: a few batches at most, however long the video.

Every output goes to a temp file that is renamed when the video is finished, so a
killed run or a file that cannot be decoded never leaves a half-written MP4 behind. A
cut file keeps the frames that decode and is reported as a failure for the rest.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import IO, Any, Generic, TypeVar

import av
import numpy as np

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.detections import Detections
from mrcnn_cli.engine import ModelConfig, SegmentConfig, prepare_output
from mrcnn_cli.errors import DecodeError, FailedItem, MrcnnError
from mrcnn_cli.inference import predict
from mrcnn_cli.journal import Journal, settings_hash, write_failures
from mrcnn_cli.models import LoadedModel
from mrcnn_cli.postprocess import resolve_class_filter
from mrcnn_cli.progress import ProgressReporter, RunSummary
from mrcnn_cli.sources import SourceItem, collect_sources
from mrcnn_cli.writers import output_path, safe_rel
from mrcnn_cli.writers.coco import detections_to_results, image_entry
from mrcnn_cli.writers.masks import write_masks
from mrcnn_cli.writers.overlay import OverlayStyle, annotate

SAVE_KINDS = ("video", "masks", "coco")
# Tried in order when no --codec is given: H.264 where FFmpeg has libx264, else MPEG-4
# Part 2, which every FFmpeg build can encode and every MP4 player can play.
DEFAULT_CODECS = ("libx264", "mpeg4")
DEFAULT_CRF = 20
VIDEO_SUFFIX = ".mp4"
PREDICTIONS_SUFFIX = ".predictions.json"
IMAGES_SUFFIX = ".images.json"
# Sample rates the AAC encoder takes; other rates are resampled to 48 kHz.
_AAC_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000})
# AAC layouts by channel count (sources may have an unnamed "N channels" layout).
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_FALLBACK_FPS = Fraction(30)
# Output timestamps keep the source's (variable rates stay variable) at this resolution:
# a multiple of 24, 25, 30, 30000/1001, 50, 60 frames/s, and within MPEG-4's 65535 limit.
_TIME_BASE = Fraction(1, 30_000)
_MASK_NAME = re.compile(r"^(\d{6,})\.png$")

OnFrames = Callable[[int, int], None]  # (frames done now, detections in them)


# --- settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoConfig:
    """One `mrcnn video` run (and the video part of `mrcnn segment`)."""

    inputs: tuple[str, ...] = ()
    out: Path = Path("results")
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 2
    stride: int = 1
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None
    save: tuple[str, ...] = ("video",)
    overwrite: bool = False
    codec: str | None = None
    crf: int = DEFAULT_CRF
    overlay_style: OverlayStyle = field(default_factory=OverlayStyle)

    def validate(self) -> None:
        unknown = set(self.save) - set(SAVE_KINDS)
        if unknown or not self.save:
            raise MrcnnError(f"--save takes a comma-separated subset of {', '.join(SAVE_KINDS)}")
        if self.batch_size < 1 or self.stride < 1:
            raise MrcnnError("--batch-size and --stride must be at least 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise MrcnnError("--max-frames must be at least 1")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise MrcnnError("--start must be >= 0 and --end greater than --start")
        if not 0 <= self.crf <= 51:
            raise MrcnnError("--crf must be between 0 and 51")
        if self.codec is not None and "video" in self.save:
            pick_encoder(self.codec)

    def output_settings(self) -> dict[str, Any]:
        """What changes a video's outputs: a rerun with other values redoes the video."""
        model = asdict(self.model)
        model.pop("device")
        return {
            "model": model,
            "stride": self.stride,
            "start": self.start,
            "end": self.end,
            "max_frames": self.max_frames,
            "save": sorted(self.save),
            "codec": self.codec,
            "crf": self.crf,
            "style": asdict(self.overlay_style),
        }

    @classmethod
    def from_segment(cls, cfg: SegmentConfig) -> VideoConfig:
        """Videos met by `mrcnn segment`: its overlays become the MP4, masks and COCO per frame."""
        kinds = {"overlay": "video", "masks": "masks", "coco": "coco"}
        return cls(
            out=cfg.out,
            model=cfg.model,
            batch_size=cfg.batch_size,
            save=tuple(kinds[k] for k in cfg.save),
            overwrite=cfg.overwrite,
            overlay_style=cfg.overlay_style,
        )


@dataclass(frozen=True)
class FrameWindow:
    """Which frames to read: [start, end) seconds from the start of the video, at most max."""

    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None


@dataclass(frozen=True)
class VideoPaths:
    """Where one video's outputs go (names mirror the input tree like every writer's)."""

    video: Path
    predictions: Path
    images: Path
    masks: Path

    @classmethod
    def for_item(cls, out: Path, rel: PurePosixPath) -> VideoPaths:
        rel = safe_rel(rel)
        return cls(
            video=Path(out, *rel.with_suffix(VIDEO_SUFFIX).parts),
            predictions=Path(out, *rel.with_suffix(PREDICTIONS_SUFFIX).parts),
            images=Path(out, *rel.with_suffix(IMAGES_SUFFIX).parts),
            masks=output_path(out, "masks", rel, ""),
        )


def frame_mask_rel(rel: PurePosixPath, index: int) -> PurePosixPath:
    """`<rel stem>/<index:06d>.png`: `write_masks` puts it under `masks/`."""
    return safe_rel(rel).with_suffix("") / f"{index:06d}.png"


# --- reading -----------------------------------------------------------------------


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
T = TypeVar("T")


class FrameReader:
    """`decode_frames` in a background thread, at most `lookahead` frames ahead."""

    def __init__(
        self, path: Path, window: FrameWindow, lookahead: int, report: DecodeReport
    ) -> None:
        self.report = report
        self._args = (path, window)
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
            for frame in decode_frames(*self._args, self.report):
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


# --- the model side ------------------------------------------------------------------


def predict_frames(
    frames: Iterable[Frame],
    loaded: LoadedModel,
    batch_size: int,
    stride: int,
    mask_threshold: float,
    keep: frozenset[int] | None,
    max_held: int = 32,
) -> Iterator[tuple[Frame, Detections]]:
    """(frame, detections) for every frame, in order; the model sees every `stride`-th.

    Keyed frames are batched `batch_size` at a time; the frames after a keyed frame wait
    for its result (so at most `max_held` frames are held: a batch is cut short when
    more would be) and then share its `Detections` object.
    """
    held: list[Frame] = []
    keyed = 0
    last: Detections | None = None

    def flush() -> Iterator[tuple[Frame, Detections]]:
        nonlocal last, keyed
        keys = [f.image for f in held if f.index % stride == 0]
        results = iter(_predict(loaded, keys, mask_threshold, keep))
        for f in held:
            if f.index % stride == 0:
                last = next(results)
            assert last is not None
            yield f, last
        held.clear()
        keyed = 0

    for frame in frames:
        is_key = frame.index % stride == 0
        if not is_key and not held:
            assert last is not None  # frame 0 is always keyed
            yield frame, last
            continue
        held.append(frame)
        keyed += is_key
        if keyed == batch_size or len(held) >= max_held:
            yield from flush()
    if held:
        yield from flush()


def _predict(
    loaded: LoadedModel,
    images: list[np.ndarray],
    mask_threshold: float,
    keep: frozenset[int] | None,
) -> list[Detections]:
    """One batched forward; out of memory, retry frame by frame before giving up."""
    try:
        return predict(loaded, images, mask_threshold, keep)
    except (MemoryError, RuntimeError) as exc:
        if len(images) == 1 or not _out_of_memory(exc):
            raise
    return [d for image in images for d in predict(loaded, [image], mask_threshold, keep)]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


# --- writing -----------------------------------------------------------------------


def pick_encoder(requested: str | None = None) -> str:
    """The encoder to use: `requested` if FFmpeg has it, else the first of DEFAULT_CODECS."""
    for name in (requested,) if requested else DEFAULT_CODECS:
        try:
            av.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            if requested:
                raise MrcnnError(f"--codec {requested}: FFmpeg has no such encoder") from None
    raise MrcnnError(f"FFmpeg can encode none of {', '.join(DEFAULT_CODECS)}")


class AudioTrack:
    """The source's first audio track, carried into the output alongside the frames.

    Packets are copied as they are when MP4 can hold the codec (AAC, MP3, Opus, ...),
    otherwise decoded and encoded to AAC. `mux_until` is called after each video frame so
    audio and video stay interleaved without buffering the whole track.
    """

    def __init__(self, source: Path, out: av.container.OutputContainer) -> None:
        self._input = av.open(str(source), mode="r")
        self._in = self._input.streams.audio[0]
        video = self._input.streams.video[0]
        self._origin = float((video.start_time or 0) * video.time_base)
        self._out = out
        self.copy = self._in.codec_context.name in out.supported_codecs
        if self.copy:
            self._stream = out.add_stream_from_template(self._in)
        else:
            rate = self._in.codec_context.sample_rate
            self._stream = out.add_stream("aac", rate=rate if rate in _AAC_RATES else 48000)
            channels = len(self._in.codec_context.layout.channels)
            self._stream.layout = _AAC_LAYOUTS.get(channels, "stereo")
        self._packets: Iterator[av.Packet] = iter(())
        self._pending: av.Packet | None = None
        self._t0: float | None = None
        self._cut = False
        self._done = False

    def start(self, t0: float, cut: bool) -> None:
        """The first output frame is at `t0` s of the video; audio before it is dropped
        when the video was cut (--start), kept (e.g. AAC priming) when it was not."""
        self._t0, self._cut = t0, cut
        if cut:
            offset = int((self._origin + t0) / self._in.time_base)
            try:
                self._input.seek(offset, stream=self._in, backward=True)
            except av.FFmpegError:
                pass  # read from the start and drop what comes before t0
        self._packets = self._input.demux(self._in)

    def _next_packet(self) -> av.Packet | None:
        if self._pending is not None:
            packet, self._pending = self._pending, None
            return packet
        while not self._done:
            try:
                packet = next(self._packets)
            except (StopIteration, av.FFmpegError):  # a cut file: keep what was read
                self._done = True
                return None
            if packet.dts is not None and packet.pts is not None:
                return packet
        return None

    def _time(self, packet: av.Packet) -> float:
        return float(packet.pts * packet.time_base) - self._origin

    def mux_until(self, until: float) -> None:
        """Write the audio that starts before `until` (seconds of the video)."""
        if self._t0 is None:
            return
        while (packet := self._next_packet()) is not None:
            start = self._time(packet)
            if start >= until:
                self._pending = packet
                return
            if self._cut and start < self._t0 - 1e-6:
                continue
            self._write(packet)

    def _write(self, packet: av.Packet) -> None:
        shift = int(round((self._origin + self._t0) / packet.time_base))
        if self.copy:
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = self._stream
            self._out.mux(packet)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError:
            return
        for frame in frames:
            if frame.pts is not None:
                frame.pts -= shift
            self._out.mux(self._stream.encode(frame))

    def finish(self, until: float) -> None:
        self.mux_until(until)
        if not self.copy:
            self._out.mux(self._stream.encode(None))

    def close(self) -> None:
        self._input.close()


class VideoEncoder:
    """An MP4 file at `path`: the annotated frames (H.264 or the fallback) plus the audio.

    Timestamps are the source frames' own, so variable frame rates and audio sync are
    kept; the stream's nominal rate is the source's.
    """

    def __init__(
        self,
        path: Path,
        source: Path,
        width: int,
        height: int,
        fps: Fraction,
        codec: str,
        crf: int,
        color: dict[str, int],
        with_audio: bool,
    ) -> None:
        self._out = av.open(
            str(path), mode="w", format="mp4", container_options={"movflags": "+faststart"}
        )
        try:
            self._stream = self._add_video(codec, width, height, fps, crf, color)
            self.audio = AudioTrack(source, self._out) if with_audio else None
        except BaseException:
            self._out.close()
            raise
        self._color = color
        self._t0: float | None = None
        self._last_pts = -1
        self._period = 1.0 / float(fps)
        self._end = 0.0

    def _add_video(
        self, codec: str, width: int, height: int, fps: Fraction, crf: int, color: dict[str, int]
    ) -> av.VideoStream:
        options = {"crf": str(crf), "preset": "veryfast"} if codec == "libx264" else {}
        stream = self._out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = width, height
        # 4:2:0 needs even sizes; odd-sized video keeps full chroma instead of being cropped.
        odd = width % 2 or height % 2
        stream.pix_fmt = "yuv444p" if odd and codec == "libx264" else "yuv420p"
        if codec == "mpeg4":  # its default 200 kb/s turns overlays to mush
            stream.bit_rate = max(1_000_000, int(width * height * float(fps) * 0.25))
        stream.codec_context.time_base = _TIME_BASE
        for name, value in color.items():
            setattr(stream.codec_context, name, value)
        if color:
            stream.codec_context.color_range = 1  # limited ("MPEG"), what players assume
        return stream

    def write(self, image: np.ndarray, time: float) -> None:
        if self._t0 is None:
            self._t0 = time
        rel = time - self._t0
        pts = max(round(rel / _TIME_BASE), self._last_pts + 1)
        self._last_pts = pts
        self._end = max(self._end, rel + self._period)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame = frame.reformat(
            format=self._stream.pix_fmt,
            dst_colorspace=self._color.get("colorspace"),
            dst_color_range=1 if self._color else None,
        )
        frame.pts, frame.time_base = pts, self._stream.codec_context.time_base
        self._out.mux(self._stream.encode(frame))
        if self.audio is not None:
            self.audio.mux_until(self._t0 + rel + self._period)

    def start_audio(self, t0: float, cut: bool) -> None:
        if self.audio is not None:
            self.audio.start(t0, cut)

    def finish(self) -> None:
        self._out.mux(self._stream.encode(None))
        if self.audio is not None and self._t0 is not None:
            self.audio.finish(self._t0 + self._end)

    def close(self) -> None:
        try:
            if self.audio is not None:
                self.audio.close()
        finally:
            self._out.close()


class CocoStream:
    """`<stem>.predictions.json` (a COCO results list) and `<stem>.images.json` (one entry
    per frame), written entry by entry so a long video never holds them in memory."""

    def __init__(self, predictions: IO[str], images: IO[str]) -> None:
        self._pred, self._images = predictions, images
        self._first_pred = self._first_image = True
        self._pred.write("[")
        self._images.write("[")

    def add(self, image: dict[str, Any], results: list[dict[str, Any]]) -> None:
        self._images.write(("\n" if self._first_image else ",\n") + json.dumps(image))
        self._first_image = False
        for entry in results:
            self._pred.write(("" if self._first_pred else ",") + json.dumps(entry))
            self._first_pred = False

    def finish(self) -> None:
        self._pred.write("]")
        self._images.write("\n]\n")


@contextmanager
def coco_stream(predictions: Path, images: Path) -> Iterator[CocoStream]:
    with atomic_path(predictions) as p_tmp, atomic_path(images) as i_tmp:
        with open(p_tmp, "w", encoding="utf-8") as pf, open(i_tmp, "w", encoding="utf-8") as imf:
            stream = CocoStream(pf, imf)
            yield stream
            stream.finish()


def frame_image_entry(rel: PurePosixPath, frame: Frame, height: int, width: int) -> dict:
    """A COCO image entry for one frame: id = frame index + 1, plus where it is in the video."""
    entry = image_entry(frame.index + 1, frame_mask_rel(rel, frame.index), width, height)
    entry.update(video=str(rel), frame_index=frame.index, timestamp=round(frame.time, 6))
    return entry


class FrameSink:
    """Everything one frame's outputs need; runs on the writer thread, in frame order."""

    def __init__(
        self,
        cfg: VideoConfig,
        item: SourceItem,
        video_tmp: Path | None,
        coco: CocoStream | None,
        info: VideoInfo,
        report: DecodeReport,
    ) -> None:
        self.cfg, self.item, self.video_tmp, self.coco = cfg, item, video_tmp, coco
        self.info, self.report = info, report
        self.encoder: VideoEncoder | None = None
        self.frames = 0
        # --stride hands the same Detections to several frames: RLE-encode them once.
        self._encoded: tuple[Detections, list[dict[str, Any]]] | None = None

    def write(self, job: tuple[Frame, Detections]) -> None:
        frame, dets = job
        h, w = frame.image.shape[:2]
        if self.video_tmp is not None:
            if self.encoder is None:
                self.encoder = self._open_encoder(w, h, frame.time)
            self.encoder.write(annotate(frame.image, dets, self.cfg.overlay_style), frame.time)
        rel = frame_mask_rel(self.item.rel, frame.index)
        if "masks" in self.cfg.save:
            write_masks(self.cfg.out, rel, dets, h, w, "instance")
        if self.coco is not None:
            if self._encoded is None or self._encoded[0] is not dets:
                self._encoded = (dets, detections_to_results(dets, 0))
            results = [{**r, "image_id": frame.index + 1} for r in self._encoded[1]]
            self.coco.add(frame_image_entry(self.item.rel, frame, h, w), results)
        self.frames += 1

    def _open_encoder(self, width: int, height: int, t0: float) -> VideoEncoder:
        encoder = VideoEncoder(
            self.video_tmp,
            self.item.path,
            width,
            height,
            self.info.fps,
            pick_encoder(self.cfg.codec),
            self.cfg.crf,
            self.report.color,
            with_audio=self.info.audio_codec is not None,
        )
        encoder.start_audio(t0, cut=self.cfg.start > 0)
        return encoder

    def finish(self) -> None:
        if self.encoder is not None:
            try:
                self.encoder.finish()
            finally:
                self.encoder.close()

    def abort(self) -> None:
        if self.encoder is not None:
            self.encoder.close()


class BackgroundWriter(Generic[T]):
    """Calls `handle(item)` on a thread for each `put` item, in order (bounded queue).

    After an error the thread keeps draining so `put` never blocks; the error is raised
    in the producer at its next `put` or on leaving the `with` block.
    """

    def __init__(
        self,
        handle: Callable[[T], None],
        finish: Callable[[], None],
        abort: Callable[[], None],
        maxsize: int,
    ) -> None:
        self._handle, self._finish, self._abort = handle, finish, abort
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="video-write", daemon=True)

    def __enter__(self) -> BackgroundWriter[T]:
        self._thread.start()
        return self

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None and not self._aborted:
                try:
                    self._handle(item)
                except BaseException as exc:
                    self._error = exc
        try:
            if self._error is None and not self._aborted:
                self._finish()
            else:
                self._abort()
        except BaseException as exc:
            self._error = self._error or exc

    def put(self, item: T) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._aborted = exc_type is not None
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error


# --- one video ---------------------------------------------------------------------


@dataclass(frozen=True)
class VideoOutcome:
    """How one video went: frames written, detections, resumed, and its failure if any."""

    frames: int = 0
    detections: int = 0
    skipped: bool = False
    failure: FailedItem | None = None

    def report_as_item(self, progress: ProgressReporter) -> None:
        """Count the whole video as one item (how `mrcnn segment` counts it)."""
        if self.failure is not None:
            progress.fail(self.failure)
        elif self.skipped:
            progress.skip()
        else:
            progress.advance(detections=self.detections)


class _NoFrames(Exception):
    """Nothing decoded: leave no output at all."""


def video_digest(cfg: VideoConfig, source: Path) -> str:
    """Settings plus the source file's size and mtime: a changed input is done again."""
    stat = source.stat()
    return settings_hash(
        {**cfg.output_settings(), "source": [stat.st_size, stat.st_mtime_ns, str(source)]}
    )


def _outputs_exist(cfg: VideoConfig, paths: VideoPaths) -> bool:
    wanted = []
    if "video" in cfg.save:
        wanted.append(paths.video)
    if "coco" in cfg.save:
        wanted += [paths.predictions, paths.images]
    return all(p.is_file() for p in wanted)


def process_video(
    item: SourceItem,
    cfg: VideoConfig,
    loaded: LoadedModel,
    keep: frozenset[int] | None,
    on_frames: OnFrames | None = None,
    info: VideoInfo | None = None,
) -> VideoOutcome:
    """Run the model over one video and write its outputs; problems come back as values.

    `on_frames(n, detections)` is called from this thread as frames are predicted.
    """
    try:
        info = info or probe_video(item.path)
    except DecodeError as exc:
        return VideoOutcome(failure=FailedItem(item.path, str(exc)))
    paths = VideoPaths.for_item(cfg.out, item.rel)
    if paths.video.exists() and paths.video.resolve() == item.path.resolve():
        reason = "the output would overwrite the input; choose another --out"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    journal = Journal(cfg.out)
    digest = video_digest(cfg, item.path)
    if not cfg.overwrite and journal.is_done(item.rel, digest) and _outputs_exist(cfg, paths):
        return VideoOutcome(skipped=True)
    journal.forget(item.rel)  # from here on, an earlier run's outputs are not "done"

    report = DecodeReport()
    try:
        frames, detections = _run_video(item, cfg, loaded, keep, info, paths, report, on_frames)
    except _NoFrames:
        reason = report.problem or "no frames could be decoded"
        if report.problem is None and (cfg.start > 0 or cfg.end is not None):
            reason = "no frames between --start and --end"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    except DecodeError as exc:
        return VideoOutcome(failure=FailedItem(item.path, str(exc)))
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        reason = f"out of memory in the model ({type(exc).__name__})"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    except (OSError, ValueError, av.FFmpegError) as exc:
        return VideoOutcome(failure=FailedItem(item.path, f"cannot write outputs: {exc}"))
    if "masks" in cfg.save:
        _remove_stale_masks(paths.masks, frames)
    if report.problem is not None:
        return VideoOutcome(frames, detections, failure=FailedItem(item.path, report.problem))
    journal.record(
        item.rel,
        source=item.path,
        image_id=0,
        width=info.width,
        height=info.height,
        results=[],
        settings_hash=digest,
    )
    return VideoOutcome(frames, detections)


def _run_video(
    item: SourceItem,
    cfg: VideoConfig,
    loaded: LoadedModel,
    keep: frozenset[int] | None,
    info: VideoInfo,
    paths: VideoPaths,
    report: DecodeReport,
    on_frames: OnFrames | None,
) -> tuple[int, int]:
    window = FrameWindow(cfg.start, cfg.end, cfg.max_frames)
    detections = 0
    with ExitStack() as stack:
        video_tmp = stack.enter_context(atomic_path(paths.video)) if "video" in cfg.save else None
        coco = None
        if "coco" in cfg.save:
            coco = stack.enter_context(coco_stream(paths.predictions, paths.images))
        reader = stack.enter_context(FrameReader(item.path, window, 2 * cfg.batch_size + 2, report))
        sink = FrameSink(cfg, item, video_tmp, coco, info, report)
        writer = stack.enter_context(
            BackgroundWriter(sink.write, sink.finish, sink.abort, 2 * cfg.batch_size + 8)
        )
        for frame, dets in predict_frames(
            reader, loaded, cfg.batch_size, cfg.stride, cfg.model.mask_thr, keep
        ):
            writer.put((frame, dets))
            detections += len(dets)
            if on_frames is not None:
                on_frames(1, len(dets))
        if report.frames == 0:
            raise _NoFrames
    return report.frames, detections


def _remove_stale_masks(folder: Path, frames: int) -> None:
    """Drop frame PNGs an earlier, longer run left beyond this run's last frame."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _MASK_NAME.match(path.name)
        if match and int(match.group(1)) >= frames:
            path.unlink(missing_ok=True)


# --- the command's job ---------------------------------------------------------------


def run_videos(
    cfg: VideoConfig,
    enabled_progress: bool = True,
    quiet: bool = False,
    loaded: LoadedModel | None = None,
) -> RunSummary:
    """`mrcnn video`: every input video in turn; progress and summary count frames."""
    cfg.validate()
    items, failures = collect_sources(cfg.inputs, kinds=frozenset({"video"}))
    if not items and not failures:
        raise MrcnnError("no inputs given")
    prepare_output(cfg.out)
    loaded = loaded or cfg.model.load()
    keep = resolve_class_filter(cfg.model.classes, loaded.class_names, loaded.category_ids)
    window = FrameWindow(cfg.start, cfg.end, cfg.max_frames)

    probed: list[tuple[SourceItem, VideoInfo | FailedItem]] = []
    for item in items:
        try:
            probed.append((item, probe_video(item.path)))
        except DecodeError as exc:
            probed.append((item, FailedItem(item.path, str(exc))))
    total = len(failures) + sum(
        1 if isinstance(info, FailedItem) else info.expected_frames(window) for _, info in probed
    )

    with ProgressReporter(
        total, unit="frames", enabled=enabled_progress, quiet=quiet, description="video"
    ) as progress:
        for failed in failures:
            progress.fail(failed)
        for item, info in probed:
            if isinstance(info, FailedItem):
                progress.fail(info)
                continue
            outcome = process_video(item, cfg, loaded, keep, progress.advance, info)
            if outcome.skipped:
                progress.skip(info.expected_frames(window))
            if outcome.failure is not None:
                progress.fail(outcome.failure)
        summary = progress.summary()
    # The bar's total was an estimate from the headers; the summary counts what happened.
    summary = replace(summary, total=summary.processed + summary.skipped + len(summary.failed))
    write_failures(cfg.out, summary.failed)
    return summary
