"""What happens to each frame after the model: tracking, overlay into the MP4, mask
PNGs, COCO, MOT.

Runs on the writer thread, in frame order (which tracking needs); COCO and MOT files are
streamed entry by entry so a long video never holds its results in memory.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.config import VideoConfig
from mrcnn_cli.detections import Detections, image_entry
from mrcnn_cli.sources import SourceItem
from mrcnn_cli.tracking import UNTRACKED, Tracker, TrackTable, mot_lines
from mrcnn_cli.video.encoder import VideoEncoder, pick_encoder
from mrcnn_cli.video.paths import frame_mask_rel
from mrcnn_cli.video.reader import DecodeReport, Frame, VideoInfo
from mrcnn_cli.writers.masks import write_masks
from mrcnn_cli.writers.overlay import annotate, auto_line_width, draw_trails


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
    if frame.source is not None:  # a folder of frames: the image file this frame was
        entry["frame_file"] = frame.source
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
        mot: IO[str] | None = None,
    ) -> None:
        self.cfg, self.item, self.video_tmp, self.coco = cfg, item, video_tmp, coco
        self.info, self.report, self.mot = info, report, mot
        self.encoder: VideoEncoder | None = None
        self.frames = 0
        # --stride hands the same Detections to several frames: RLE-encode them once.
        self._encoded: tuple[Detections, list[dict[str, Any]]] | None = None
        self.tracker = Tracker(cfg.track) if cfg.track is not None else None
        self.tracks = TrackTable()
        self._model_dets: Detections | None = None  # the last model result seen ...
        self._tracked: Detections | None = None  # ... and what the tracker made of it
        self._trails: dict[int, deque[tuple[float, float]]] = {}

    def _track(self, dets: Detections, image: np.ndarray) -> Detections:
        """The tracker sees each model result once: frames between keyed frames (--stride)
        reuse its tracked result, so buffers count model frames."""
        if self.tracker is None:
            return dets
        if dets is not self._model_dets:
            self._model_dets, self._tracked = dets, self.tracker.update(dets, image)
            if self.cfg.trail:
                self._extend_trails(self._tracked)
        assert self._tracked is not None
        return self._tracked

    def _extend_trails(self, dets: Detections) -> None:
        assert dets.track_ids is not None
        seen = set()
        for box, track_id in zip(dets.boxes, dets.track_ids.tolist()):
            if track_id == UNTRACKED:
                continue
            centre = (float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2)
            self._trails.setdefault(track_id, deque(maxlen=self.cfg.trail)).append(centre)
            seen.add(track_id)
        for track_id in [t for t in self._trails if t not in seen]:
            del self._trails[track_id]  # a lost track's trail goes with it

    def write(self, job: tuple[Frame, Detections]) -> None:
        frame, dets = job
        dets = self._track(dets, frame.image)
        h, w = frame.image.shape[:2]
        if self.tracker is not None:
            self.tracks.add(frame.index, frame.time, dets)
            if self.mot is not None:
                self.mot.writelines(line + "\n" for line in mot_lines(frame.index, dets))
        if self.video_tmp is not None:
            if self.encoder is None:
                self.encoder = self._open_encoder(w, h, frame.time)
            drawn = annotate(frame.image, dets, self.cfg.overlay_style)
            if self._trails:
                width = self.cfg.overlay_style.line_width or auto_line_width(h, w)
                draw_trails(drawn, self._trails, max(2, width))
            self.encoder.write(drawn, frame.time)
        rel = frame_mask_rel(self.item.rel, frame.index)
        if "masks" in self.cfg.save:
            write_masks(self.cfg.out, rel, dets, h, w, "instance")
        if self.coco is not None:
            if self._encoded is None or self._encoded[0] is not dets:
                self._encoded = (dets, dets.to_coco(0))
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
