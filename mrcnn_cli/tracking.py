"""Object tracking across video frames: `Detections` in, the same with `track_ids` out.

The association itself is the `trackers` package's ByteTrack (Roboflow's maintained
tracker library; supervision's own ByteTrack is deprecated in its favour): a Kalman
filter per track, then two rounds of box-IoU matching (confident detections first, the
rest against the tracks still unmatched), so an object that dips under the confident
score for a few frames keeps its track. What this module adds around it:

- one ByteTrack per class, so a track's class never flips and objects of different
  classes that cross cannot take each other's ids;
- buffers count *model* frames (calls to `update`), never video frames: with
  `--stride N` a track survives `buffer` model frames, i.e. `buffer * N` video frames;
- `TrackTable`, the per-track summary behind `<name>.tracks.csv`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrcnn_cli.config import TrackSettings
from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import MrcnnError

UNTRACKED = -1  # a detection no confirmed track owns (yet): drawn, not in MOT/tracks files


def _bytetrack(settings: TrackSettings) -> Any:
    """The `trackers` package's tracker for one class, as `settings` ask."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from trackers import ByteTrackTracker, OCSORTTracker
    except ImportError as exc:  # pragma: no cover - a dependency; here for broken installs
        raise MrcnnError(f"tracking needs the 'trackers' package: {exc}") from None
    if settings.method == "ocsort":
        return OCSORTTracker(
            lost_track_buffer=settings.buffer,
            frame_rate=30.0,
            minimum_consecutive_frames=settings.min_frames,
            minimum_iou_threshold=settings.match_iou,
            high_conf_det_threshold=settings.high_thr,
        )
    return ByteTrackTracker(
        lost_track_buffer=settings.buffer,
        frame_rate=30.0,  # with 30, ByteTrack's buffer is exactly `buffer` update calls
        track_activation_threshold=settings.new_track_thr,
        minimum_consecutive_frames=settings.min_frames,
        minimum_iou_threshold=settings.match_iou,
        high_conf_det_threshold=settings.high_thr,
    )


class Tracker:
    """Follows objects from frame to frame; one per video (or camera), fed in order.

    One ByteTrack per class: a track only ever takes detections of its own class, so
    two objects of different classes that cross cannot swap ids, and a track's class
    never flips. Ids are unique across classes and start at 1.

    >>> tracker = Tracker()
    >>> for frame in frames:
    ...     dets = tracker.update(seg(frame))   # dets.track_ids: an id per detection
    """

    def __init__(self, settings: TrackSettings | None = None) -> None:
        self.settings = settings or TrackSettings()
        self.settings.validate()
        _bytetrack(self.settings)  # fail now, not at the first detection, if unavailable
        self._per_class: dict[int, Any] = {}
        self._global: dict[tuple[int, int], int] = {}  # (label, ByteTrack's id) -> ours

    def update(self, dets: Detections) -> Detections:
        """`dets` in their own order, with `track_ids` (UNTRACKED where no track owns one)."""
        import supervision as sv

        ids = np.full(len(dets), UNTRACKED, np.int64)
        labels = np.unique(dets.labels).tolist()
        for label in sorted(set(labels) | set(self._per_class)):  # every class ages its tracks
            tracker = self._per_class.get(label)
            if tracker is None:
                tracker = self._per_class[label] = _bytetrack(self.settings)
            rows = np.flatnonzero(dets.labels == label)
            given = sv.Detections(
                xyxy=np.asarray(dets.boxes[rows], dtype=np.float64).reshape(-1, 4),
                confidence=np.asarray(dets.scores[rows], dtype=np.float64),
                data={"row": rows},
            )
            tracked = tracker.update(given)
            for row, local in zip(np.asarray(tracked.data.get("row", []), int).tolist(),
                                  np.asarray(tracked.tracker_id, int).tolist()):  # fmt: skip
                if local >= 0:
                    key = (label, local)
                    ids[row] = self._global.setdefault(key, len(self._global) + 1)
        return Detections(dets.boxes, dets.scores, dets.labels, dets.masks, dets.class_names,
                          dets.category_ids, ids)  # fmt: skip

    def reset(self) -> None:
        """Forget every track (a new video); ids start again from 1."""
        self._per_class.clear()
        self._global.clear()


@dataclass
class TrackRow:
    """One track's life: `<name>.tracks.csv` has one of these per track."""

    track_id: int
    label: int
    first_frame: int
    last_frame: int
    first_time: float
    last_time: float
    frames: int = 0
    score_sum: float = 0.0
    area_sum: float = 0.0


@dataclass
class TrackTable:
    """Per-track statistics, filled frame by frame (video frames, so --stride's reused
    frames count as seen)."""

    rows: dict[int, TrackRow] = field(default_factory=dict)

    def add(self, frame_index: int, time: float, dets: Detections) -> None:
        if dets.track_ids is None:
            return
        areas = dets.masks.areas() if dets.masks is not None else np.zeros(len(dets))
        for i, track_id in enumerate(dets.track_ids.tolist()):
            if track_id == UNTRACKED:
                continue
            row = self.rows.get(track_id)
            if row is None:
                row = self.rows[track_id] = TrackRow(
                    track_id, int(dets.labels[i]), frame_index, frame_index, time, time
                )
            row.last_frame, row.last_time = frame_index, time
            row.frames += 1
            row.score_sum += float(dets.scores[i])
            row.area_sum += float(areas[i])

    def per_class(self, class_names: tuple[str, ...]) -> dict[str, int]:
        """How many tracks each class has (the run summary's line)."""
        counts = Counter(class_names[row.label] for row in self.rows.values())
        return dict(sorted(counts.items()))

    def csv_rows(self, class_names: tuple[str, ...]) -> list[list[Any]]:
        """Rows of `<name>.tracks.csv` (frames from 1, times in seconds), by track id."""
        rows = []
        for row in sorted(self.rows.values(), key=lambda r: r.track_id):
            rows.append([
                row.track_id, class_names[row.label], row.first_frame + 1, row.last_frame + 1,
                round(row.first_time, 6), round(row.last_time, 6), row.frames,
                round(row.score_sum / row.frames, 5), round(row.area_sum / row.frames, 1),
            ])  # fmt: skip
        return rows


TRACKS_CSV_HEADER = [
    "track_id", "class", "first_frame", "last_frame", "first_time", "last_time",
    "frames", "mean_score", "mean_area",
]  # fmt: skip


def mot_lines(frame_index: int, dets: Detections) -> list[str]:
    """MOTChallenge lines of one frame: `frame,id,x,y,w,h,score,-1,-1,-1`, frames from 1."""
    if dets.track_ids is None:
        return []
    lines = []
    for i, track_id in enumerate(dets.track_ids.tolist()):
        if track_id == UNTRACKED:
            continue
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        lines.append(
            f"{frame_index + 1},{track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
            f"{float(dets.scores[i]):.5f},-1,-1,-1"
        )
    return lines
