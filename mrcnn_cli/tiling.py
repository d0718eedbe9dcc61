"""Sliced ("tiled") inference for images much larger than the model's input, SAHI-style.

A model resizes every input to its own scale (the demo model: 128 px), so the objects
of a 2000 px photo shrink below what it can see. `segment_tiled` runs the model on
overlapping windows at full resolution instead, shifts each window's detections back
into the image frame, optionally adds one pass over the whole image (`full=True`, for
objects larger than a tile), and merges the duplicates the overlaps produce.

Merging (SAHI's non-maximum merging, on masks): two detections of the same class from
different windows are the same object when their masks agree where both windows saw
the image: intersection over the smaller of the two masks, each counted inside the
windows' common area, >= `match_threshold` (0.5, SAHI's IOS default). Counting inside
the common area matters for an object cut by a seam: each window holds only its own
part, and over the whole object those parts may overlap by less than half, but inside
the strip both windows saw they coincide. Matches join transitively, strongest first
(an object over three tiles is one group), but a group never holds two detections of
one prediction, and a full-pass detection never joins two groups of tile detections
(a coarse blob over two neighbours would otherwise fuse them). A group becomes one
instance: mask = the union of its tile masks (the finest view; a full-pass mask only
where no tile found the object), box = that mask's bounds, score = the best.
Unmerged detections keep the model's box and mask. Then the best `max_det` by score
are kept.

Memory: tiles are cut as views a batch at a time, each window's masks are cropped to
their bounding boxes at once, and the result keeps them as box-local crops
(`BoxMasks`): no full-image mask is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mrcnn_cli.box_masks import BoxMasks
from mrcnn_cli.detections import Detections

Predict = Callable[[Sequence[np.ndarray]], list[Detections]]

_PAIR_CHUNK = 512  # rows per block of the pairwise box-overlap test


@dataclass(frozen=True)
class Window:
    """A tile of the image: columns x0..x1 and rows y0..y1 (ends exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def _starts(length: int, size: int, step: int) -> list[int]:
    """Window starts along one axis: every `step`, the last one flush with the border."""
    if length <= size:
        return [0]
    return [*range(0, length - size, step), length - size]


def tile_windows(height: int, width: int, size: int, overlap: float = 0.2) -> list[Window]:
    """Row-major `size` x `size` windows covering the image, none reaching past it.

    Neighbours overlap by at least round(size * overlap) px; the last row and column are
    aligned to the image border (so they may overlap more). A side shorter than `size`
    gets one window of its own length, so a small image is one window.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {height}x{width}")
    if size < 1:
        raise ValueError(f"tile size must be >= 1 px, got {size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    step = max(1, size - round(size * overlap))
    return [
        Window(x0, y0, min(x0 + size, width), min(y0 + size, height))
        for y0 in _starts(height, size, step)
        for x0 in _starts(width, size, step)
    ]


@dataclass
class _Piece:
    """One detection in the image frame, its mask cut to the mask's own bounds."""

    source: int  # which prediction it came from (window index; the full pass is one too)
    window: Window
    label: int
    score: float
    box: np.ndarray  # float32 xyxy, image frame
    x0: int  # mask crop origin, image frame
    y0: int
    mask: np.ndarray  # bool [h, w]; empty (0 x 0) if the mask has no pixels

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x0 + self.mask.shape[1], self.y0 + self.mask.shape[0]


def _pieces(dets: Detections, window: Window, source: int) -> Iterator[_Piece]:
    if dets.masks is None:
        raise ValueError("tiled inference merges on masks; the model returned none")
    if len(dets) and dets.masks.shape[1:] != (window.height, window.width):
        raise ValueError(
            f"masks are {dets.masks.shape[1:]}, tile is {(window.height, window.width)}"
        )
    shift = np.array([window.x0, window.y0, window.x0, window.y0], np.float32)
    for i in range(len(dets)):
        roi = dets.masks.tight_region(i)
        if roi is None:
            crop, x0, y0 = np.zeros((0, 0), bool), window.x0, window.y0
        else:
            crop = dets.masks.cut(i, *roi)
            x0, y0 = window.x0 + int(roi[1].start), window.y0 + int(roi[0].start)
        box = dets.boxes[i] + shift
        yield _Piece(source, window, int(dets.labels[i]), float(dets.scores[i]), box, x0, y0, crop)


def _mask_in(piece: _Piece, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The piece's mask inside [x0, x1) x [y0, y1) (image frame), as a bool view."""
    px0, py0, px1, py1 = piece.bounds
    cx0, cy0, cx1, cy1 = max(x0, px0), max(y0, py0), min(x1, px1), min(y1, py1)
    if cx0 >= cx1 or cy0 >= cy1:
        return np.zeros((0, 0), bool)
    return piece.mask[cy0 - py0 : cy1 - py0, cx0 - px0 : cx1 - px0]


def _overlap_in_common_area(a: _Piece, b: _Piece) -> tuple[float, float]:
    """(IoS, IoU) of two masks, both counted inside their windows' common area."""
    wx0, wy0 = max(a.window.x0, b.window.x0), max(a.window.y0, b.window.y0)
    wx1, wy1 = min(a.window.x1, b.window.x1), min(a.window.y1, b.window.y1)
    if wx0 >= wx1 or wy0 >= wy1:
        return 0.0, 0.0
    area_a = int(_mask_in(a, wx0, wy0, wx1, wy1).sum())
    area_b = int(_mask_in(b, wx0, wy0, wx1, wy1).sum())
    if area_a == 0 or area_b == 0:
        return 0.0, 0.0
    ax0, ay0, ax1, ay1 = a.bounds
    bx0, by0, bx1, by1 = b.bounds
    ix0, iy0 = max(wx0, ax0, bx0), max(wy0, ay0, by0)
    ix1, iy1 = min(wx1, ax1, bx1), min(wy1, ay1, by1)
    if ix0 >= ix1 or iy0 >= iy1:
        return 0.0, 0.0
    inter = int((_mask_in(a, ix0, iy0, ix1, iy1) & _mask_in(b, ix0, iy0, ix1, iy1)).sum())
    return inter / min(area_a, area_b), inter / (area_a + area_b - inter)


def _candidate_pairs(pieces: Sequence[_Piece]) -> Iterator[tuple[int, int]]:
    """(i, j), i < j: same class, different predictions, overlapping mask bounds."""
    if len(pieces) < 2:
        return
    bounds = np.array([p.bounds for p in pieces], np.int64)
    labels = np.array([p.label for p in pieces])
    sources = np.array([p.source for p in pieces])
    n = len(pieces)
    for start in range(0, n, _PAIR_CHUNK):
        rows = slice(start, min(start + _PAIR_CHUNK, n))
        lo = np.maximum(bounds[rows, None, :2], bounds[None, :, :2])
        hi = np.minimum(bounds[rows, None, 2:], bounds[None, :, 2:])
        overlap = (
            (lo < hi).all(axis=-1)
            & (labels[rows, None] == labels[None, :])
            & (sources[rows, None] != sources[None, :])
        )
        for i, j in zip(*np.nonzero(overlap)):
            if int(i) + start < int(j):
                yield int(i) + start, int(j)


def _area(piece: _Piece) -> int:
    """Pixels in the piece's window: smaller means the model saw it at a finer scale."""
    return piece.window.width * piece.window.height


def _groups(pieces: Sequence[_Piece], threshold: float) -> list[list[int]]:
    """Groups of pieces that are one object: union-find over matching pairs.

    Pairs of one scale (tile with tile) join first, then pairs across scales (the
    full pass with a tile); strongest match first within each (IoS, then IoU). Two
    rules keep distinct objects apart: a group never takes two pieces of the same
    prediction (the model's own NMS judged those distinct), and a coarse piece never
    joins two groups that both hold finer pieces (a coarse blob over two neighbours
    contains both, IoS 1 with each, yet they are two objects).
    """
    matches = []
    for i, j in _candidate_pairs(pieces):
        ios, iou = _overlap_in_common_area(pieces[i], pieces[j])
        if ios >= threshold:
            cross = _area(pieces[i]) != _area(pieces[j])
            matches.append((cross, -ios, -iou, i, j))  # IoU breaks IoS ties
    matches.sort()
    parent = list(range(len(pieces)))
    sources = [{p.source} for p in pieces]
    scales = [{_area(p)} for p in pieces]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for cross, _, _, i, j in matches:
        ri, rj = root(i), root(j)
        if ri == rj or sources[ri] & sources[rj]:
            continue
        finer = min(_area(pieces[i]), _area(pieces[j]))
        if cross and finer in scales[ri] and finer in scales[rj]:
            continue
        ri, rj = min(ri, rj), max(ri, rj)
        parent[rj] = ri
        sources[ri] |= sources[rj]
        scales[ri] |= scales[rj]
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _merged(pieces: Sequence[_Piece]) -> _Piece:
    """One piece for a group: the finest view's union mask, its bounds, the best score.

    The model sees a smaller window at a finer scale, so only the pieces of the group's
    finest scale shape the mask (tiles of one size simply unite); a coarser full-pass
    piece lends its score but not its blurrier outline.
    """
    if len(pieces) == 1:
        return pieces[0]
    best = max(pieces, key=lambda p: p.score)
    finest = min(_area(p) for p in pieces)
    live = [p for p in pieces if _area(p) == finest and p.mask.size]
    if not live:  # cannot happen for a matched group (both masks meet); be safe
        return best
    x0 = min(p.bounds[0] for p in live)
    y0 = min(p.bounds[1] for p in live)
    x1 = max(p.bounds[2] for p in live)
    y1 = max(p.bounds[3] for p in live)
    union = np.zeros((y1 - y0, x1 - x0), bool)
    for p in live:
        px0, py0, px1, py1 = p.bounds
        union[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0] |= p.mask
    box = np.array([x0, y0, x1, y1], np.float32)  # bounds of non-empty crops: tight already
    return _Piece(best.source, best.window, best.label, best.score, box, x0, y0, union)


def _merge(
    pieces: Sequence[_Piece], match_threshold: float = 0.5, max_det: int = 100
) -> list[_Piece]:
    """Merged pieces, best score first, at most `max_det`."""
    merged = [_merged([pieces[i] for i in group]) for group in _groups(pieces, match_threshold)]
    merged.sort(key=lambda p: -p.score)
    return merged[:max_det]


def _to_detections(
    pieces: Sequence[_Piece],
    height: int,
    width: int,
    class_names: tuple[str, ...],
    category_ids: tuple[int, ...],
) -> Detections:
    origins = np.array([(p.x0, p.y0) if p.mask.size else (0, 0) for p in pieces], np.int64)
    masks = BoxMasks(tuple(p.mask for p in pieces), origins, height, width)
    return Detections(
        boxes=np.array([p.box for p in pieces], np.float32).reshape(-1, 4),
        scores=np.array([p.score for p in pieces], np.float32),
        labels=np.array([p.label for p in pieces], np.int64),
        masks=masks,
        class_names=class_names,
        category_ids=category_ids,
    )


def segment_tiled(
    predict: Predict,
    image: np.ndarray,
    size: int,
    overlap: float = 0.2,
    full: bool = False,
    batch_size: int = 1,
    *,
    match_threshold: float = 0.5,
    max_det: int = 100,
) -> Detections:
    """Detections for the whole image from overlapping `size` px tiles (see module doc).

    `predict` takes a batch of RGB uint8 images and returns one `Detections` per image,
    in that image's frame (e.g. `Segmenter.predict`). Tiles go to it `batch_size` at a
    time; with `full=True` the whole image is predicted once more and merged in.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    height, width = image.shape[:2]
    windows = tile_windows(height, width, size, overlap)
    if full:
        windows.append(Window(0, 0, width, height))
    pieces: list[_Piece] = []
    names: tuple[tuple[str, ...], tuple[int, ...]] | None = None
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        results = predict([image[w.slices] for w in batch])
        if len(results) != len(batch):
            raise ValueError(f"predict returned {len(results)} results for {len(batch)} images")
        for source, (window, dets) in enumerate(zip(batch, results), start):
            names = names or (dets.class_names, dets.category_ids)
            pieces.extend(_pieces(dets, window, source))
    assert names is not None  # there is always at least one window
    kept = _merge(pieces, match_threshold, max_det)
    return _to_detections(kept, height, width, *names)
