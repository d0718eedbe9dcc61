"""Writing a video: the annotated frames as an MP4 (H.264 or MPEG-4) plus the source's audio."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mrcnn_cli.errors import MrcnnError

# Tried in order when no --codec is given: H.264 where FFmpeg has libx264, else MPEG-4
# Part 2, which every FFmpeg build can encode and every MP4 player can play.
DEFAULT_CODECS = ("libx264", "mpeg4")
# Sample rates the AAC encoder takes; other rates are resampled to 48 kHz.
_AAC_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000})
# AAC layouts by channel count (sources may have an unnamed "N channels" layout).
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# Output timestamps keep the source's (variable rates stay variable) at this resolution:
# a multiple of 24, 25, 30, 30000/1001, 50, 60 frames/s, and within MPEG-4's 65535 limit.
_TIME_BASE = Fraction(1, 30_000)


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
