"""Object tracking across video frames: `Detections` in, the same with `track_ids` out.

The association itself is the `trackers` package's ByteTrack (Roboflow's maintained
tracker library; supervision's own ByteTrack is deprecated in its favour): a Kalman
filter per track, then two rounds of box-IoU matching (confident detections first, the
rest against the tracks still unmatched), so an object that dips under the confident
score for a few frames keeps its track. What this module adds around it:

- one ByteTrack per class, so a track's class never flips and objects of different
  classes that cross cannot take each other's ids;
- one object seen as two classes (Mask R-CNN suppresses overlaps within a class only)
  is tracked once: a detection whose box overlaps a higher-scoring one by more than
  `duplicate_iou` takes no track (it is still drawn and written, with track id -1);
- re-identification by appearance (`relink`, when the frame is given): ByteTrack loses
  an object that is hidden for long or comes back elsewhere (it bounced while hidden) and
  starts a new track for it. Such a new track takes the id of a lost track of its class
  when the colours inside their masks agree (Bhattacharyya coefficient of 8x8x8 RGB
  histograms at least `relink`), the lost track was seen within the buffer, and the new
  detection is no further from where the lost one was than it could have moved;
- buffers count *model* frames (calls to `update`), never video frames: with
  `--stride N` a track survives `buffer` model frames, i.e. `buffer * N` video frames;
- `TrackTable`, the per-track summary behind `<name>.tracks.csv`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
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
    never flips. Ids are unique across classes and start at 1. Give the frame (RGB
    uint8, the image the detections were made on) to re-identify objects ByteTrack lost.

    >>> tracker = Tracker()
    >>> for frame in frames:
    ...     dets = tracker.update(seg(frame), frame)   # dets.track_ids: an id per detection
    """

    def __init__(self, settings: TrackSettings | None = None) -> None:
        self.settings = settings or TrackSettings()
        self.settings.validate()
        _bytetrack(self.settings)  # fail now, not at the first detection, if unavailable
        self._per_class: dict[int, Any] = {}
        self._identities = _Identities(self.settings)

    def update(self, dets: Detections, image: np.ndarray | None = None) -> Detections:
        """`dets` in their own order, with `track_ids` (UNTRACKED where no track owns one)."""
        import supervision as sv

        local: dict[int, tuple[int, int]] = {}  # row -> (label, ByteTrack's id)
        tracked = _not_duplicates(dets, self.settings.duplicate_iou)
        labels = np.unique(dets.labels[tracked]).tolist()
        for label in sorted(set(labels) | set(self._per_class)):  # every class ages its tracks
            tracker = self._per_class.get(label)
            if tracker is None:
                tracker = self._per_class[label] = _bytetrack(self.settings)
            rows = np.flatnonzero((dets.labels == label) & tracked)
            given = sv.Detections(
                xyxy=np.asarray(dets.boxes[rows], dtype=np.float64).reshape(-1, 4),
                confidence=np.asarray(dets.scores[rows], dtype=np.float64),
                data={"row": rows},
            )
            result = tracker.update(given)
            for row, local_id in zip(np.asarray(result.data.get("row", []), int).tolist(),
                                     np.asarray(result.tracker_id, int).tolist()):  # fmt: skip
                if local_id >= 0:
                    local[row] = (label, local_id)
        ids = self._identities.assign(dets, local, image)
        return Detections(dets.boxes, dets.scores, dets.labels, dets.masks, dets.class_names,
                          dets.category_ids, ids)  # fmt: skip

    def reset(self) -> None:
        """Forget every track (a new video); ids start again from 1."""
        self._per_class.clear()
        self._identities = _Identities(self.settings)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` with every box in `b` (xyxy)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _not_duplicates(dets: Detections, max_iou: float) -> np.ndarray:
    """Which detections get tracked: not one whose box overlaps a higher-scoring
    detection's by more than `max_iou` (the same object, found as another class)."""
    keep = np.ones(len(dets), bool)
    if len(dets) < 2 or max_iou >= 1.0:
        return keep
    overlap = _box_iou(np.asarray(dets.boxes, float), np.asarray(dets.boxes, float))
    for i, row in enumerate(order := np.argsort(-np.asarray(dets.scores), kind="stable")):
        if keep[row]:
            later = order[i + 1 :]
            keep[later[overlap[row, later] > max_iou]] = False
    return keep


_HIST_BINS = 8  # per RGB channel
_MODEL_KEEP = 0.9  # a track's colour model: this much old, the rest from the new view
_CLEAN_IOU = 0.05  # a view overlapping another detection more than this is not learnt
_GATE = 1.5  # how far a lost object may be found: this times (speed * frames lost + size)


def _colours(image: np.ndarray, dets: Detections, row: int) -> np.ndarray | None:
    """Normalised RGB histogram of the detection's mask pixels (its box where no mask);
    None for an empty mask or an image that is not HxWx3 uint8."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return None
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(dets.boxes[row], float)))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    mask = None
    if dets.masks is not None and dets.masks.shape[1:] == (height, width):
        mask = dets.masks.cut(row, slice(y0, y1), slice(x0, x1)).astype(np.uint8)
        if not mask.any():
            return None
    hist = cv2.calcHist([crop], [0, 1, 2], mask, [_HIST_BINS] * 3, [0, 256] * 3).ravel()
    return hist / max(float(hist.sum()), 1e-9)


@dataclass
class _Identity:
    """What is known of one track id: its class, colours, where and when it was last seen."""

    label: int
    colours: np.ndarray | None
    centre: np.ndarray
    seen: int  # model frame
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))


class _Identities:
    """ByteTrack's per-class ids -> the ids we give out, re-identifying lost objects."""

    def __init__(self, settings: TrackSettings) -> None:
        self.settings = settings
        self._of_local: dict[tuple[int, int], int] = {}
        self._known: dict[int, _Identity] = {}
        self._frame = 0

    def assign(
        self, dets: Detections, local: dict[int, tuple[int, int]], image: np.ndarray | None
    ) -> np.ndarray:
        self._frame += 1
        ids = np.full(len(dets), UNTRACKED, np.int64)
        for row, key in local.items():
            if key in self._of_local:
                ids[row] = self._of_local[key]
        active = set(ids[ids != UNTRACKED].tolist())
        for row in sorted(r for r, key in local.items() if key not in self._of_local):
            colours = _colours(image, dets, row) if image is not None else None
            track_id = self._lost_match(dets, row, local[row][0], colours, active)
            if track_id is None:
                track_id = len(self._known) + 1
                self._known[track_id] = _Identity(local[row][0], colours, _centre(dets, row), 0)
            self._of_local = {k: v for k, v in self._of_local.items() if v != track_id}
            self._of_local[local[row]] = ids[row] = track_id
            active.add(track_id)
        self._learn(dets, ids, image)
        return ids

    def _lost_match(
        self,
        dets: Detections,
        row: int,
        label: int,
        colours: np.ndarray | None,
        active: set[int],
    ) -> int | None:
        """The lost track of `label` this new detection most looks like, if close enough."""
        if colours is None or self.settings.relink <= 0:
            return None
        box = np.asarray(dets.boxes[row], float)
        size = float(np.hypot(box[2] - box[0], box[3] - box[1]))
        centre, best, best_id = _centre(dets, row), self.settings.relink, None
        for track_id, known in self._known.items():
            lost_for = self._frame - known.seen
            if known.label != label or track_id in active or known.colours is None:
                continue
            if lost_for > max(self.settings.buffer, 1):
                continue
            reach = _GATE * (float(np.hypot(*known.velocity)) * lost_for + size)
            if float(np.hypot(*(centre - known.centre))) > reach:
                continue
            similarity = float(np.sqrt(colours * known.colours).sum())
            if similarity >= best:
                best, best_id = similarity, track_id
        return best_id

    def _learn(self, dets: Detections, ids: np.ndarray, image: np.ndarray | None) -> None:
        """Update position, speed and (from views nothing overlaps) colours of tracks seen."""
        rows = np.flatnonzero(ids != UNTRACKED)
        if not len(rows):
            return
        boxes = np.asarray(dets.boxes, float)
        overlap = _box_iou(boxes[rows], boxes)
        overlap[np.arange(len(rows)), rows] = 0.0
        for i, row in enumerate(rows.tolist()):
            known = self._known[int(ids[row])]
            centre = _centre(dets, row)
            if known.seen:
                step = (centre - known.centre) / max(self._frame - known.seen, 1)
                known.velocity = 0.7 * known.velocity + 0.3 * step
            known.centre, known.seen = centre, self._frame
            if image is None or self.settings.relink <= 0:
                continue
            if known.colours is None or overlap[i].max(initial=0.0) < _CLEAN_IOU:
                colours = _colours(image, dets, row)
                if colours is not None:
                    known.colours = (
                        colours
                        if known.colours is None
                        else _MODEL_KEEP * known.colours + (1 - _MODEL_KEEP) * colours
                    )


def _centre(dets: Detections, row: int) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in dets.boxes[row])
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


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
