"""`BoxMasks`: N binary masks kept only inside their boxes.

A Mask R-CNN mask lives in its detection's box; the rest of the image is zeros. Stored
as full-image arrays, 100 masks of a 4000x3000 photo take 1.2 GB and every writer scans
12 MP per instance. Kept as a crop per instance plus the crop's top-left corner, they
take what the objects cover, and pasting, RLE, polygons, overlays and crops all work
inside the crop.

`BoxMasks` reads like the bool [N, H, W] array it stands for where that is cheap and
unambiguous: `len`, `shape`, `masks[i]` (one full-image mask, built on request),
`masks[index_array]` (a subset), `np.asarray(masks)` and any other ndarray attribute
(`masks.sum(...)`: the full stack, built on request).
Code that wants speed asks for `crop(i)` / `region(i)` / `areas()` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EMPTY = np.zeros((0, 0), bool)


@dataclass(frozen=True, eq=False)
class BoxMasks:
    """crops[i]: bool [h_i, w_i] holding every pixel of mask i; origins[i]: its (x0, y0)
    in the image; every crop lies inside the height x width image."""

    crops: tuple[np.ndarray, ...]
    origins: np.ndarray  # int64 [N, 2]: x0, y0
    height: int
    width: int

    def __post_init__(self) -> None:
        crops = tuple(np.asarray(c, dtype=bool) for c in self.crops)
        origins = np.asarray(self.origins, dtype=np.int64).reshape(-1, 2)
        if len(origins) != len(crops):
            raise ValueError(f"{len(crops)} crops but {len(origins)} origins")
        for crop, (x0, y0) in zip(crops, origins.tolist()):
            h, w = crop.shape if crop.ndim == 2 else (-1, -1)
            if h < 0 or x0 < 0 or y0 < 0 or x0 + w > self.width or y0 + h > self.height:
                raise ValueError(
                    f"a {crop.shape} crop at ({x0}, {y0}) is not inside a "
                    f"{self.height}x{self.width} image"
                )
        object.__setattr__(self, "crops", crops)
        object.__setattr__(self, "origins", origins)

    # -- building ---------------------------------------------------------------------
    @classmethod
    def from_dense(cls, masks: np.ndarray) -> BoxMasks:
        """From a bool [N, H, W] array: each mask cut to the smallest box holding it."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
        crops, origins = [], []
        for mask in masks:
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:
                crops.append(_EMPTY)
                origins.append((0, 0))
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            crops.append(mask[y0:y1, x0:x1].copy())
            origins.append((x0, y0))
        return cls(tuple(crops), np.array(origins, np.int64), masks.shape[1], masks.shape[2])

    @classmethod
    def empty(cls, height: int, width: int) -> BoxMasks:
        return cls((), np.zeros((0, 2), np.int64), height, width)

    @classmethod
    def concatenate(cls, parts: Sequence[BoxMasks]) -> BoxMasks:
        """The masks of several sets of one image size, in order."""
        if not parts:
            raise ValueError("nothing to concatenate")
        height, width = parts[0].height, parts[0].width
        if any((p.height, p.width) != (height, width) for p in parts):
            raise ValueError("BoxMasks of different image sizes cannot be joined")
        crops = tuple(c for p in parts for c in p.crops)
        return cls(crops, np.concatenate([p.origins for p in parts]), height, width)

    # -- the array it stands for ------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.crops), self.height, self.width

    ndim = 3
    dtype = np.dtype(bool)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: object) -> np.ndarray | BoxMasks:
        """An integer gives that mask at full size, a tuple indexes the full array (as
        numpy would); anything else (slice, bool or int array) gives a subset."""
        if isinstance(index, (int, np.integer)):
            return self.dense_one(int(index))
        if isinstance(index, tuple):
            if index and isinstance(index[0], (int, np.integer)):
                return self.dense_one(int(index[0]))[index[1:]]
            return self.dense()[index]
        picked = np.arange(len(self.crops))[index].reshape(-1).tolist()
        return BoxMasks(
            tuple(self.crops[i] for i in picked), self.origins[picked], self.height, self.width
        )

    def __iter__(self):
        return (self.dense_one(i) for i in range(len(self.crops)))

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        dense = self.dense()
        return dense if dtype is None else dense.astype(dtype)

    def __getattr__(self, name: str) -> object:
        """Any other ndarray attribute (`sum`, `any`, `astype`, ...) is the full array's,
        built on request: old code keeps working, new code asks for crops."""
        if name.startswith("_") or name in {"crops", "origins", "height", "width"}:
            raise AttributeError(name)
        return getattr(self.dense(), name)

    def dense_one(self, i: int) -> np.ndarray:
        """Mask i as a bool [H, W] array (a new one)."""
        out = np.zeros((self.height, self.width), bool)
        rows, cols = self.region(i)
        out[rows, cols] = self.crops[i]
        return out

    def dense(self) -> np.ndarray:
        """Every mask as one bool [N, H, W] array: what the crops avoid; use sparingly."""
        out = np.zeros(self.shape, bool)
        for i, crop in enumerate(self.crops):
            rows, cols = self.region(i)
            out[i, rows, cols] = crop
        return out

    # -- box-local access -------------------------------------------------------------
    def region(self, i: int) -> tuple[slice, slice]:
        """Row and column slices of crop i in the image."""
        x0, y0 = self.origins[i].tolist()
        h, w = self.crops[i].shape
        return slice(y0, y0 + h), slice(x0, x0 + w)

    def crop(self, i: int) -> tuple[np.ndarray, int, int]:
        """(crop, x0, y0) of mask i."""
        x0, y0 = self.origins[i].tolist()
        return self.crops[i], x0, y0

    def cut(self, i: int, rows: slice, cols: slice) -> np.ndarray:
        """Mask i inside the image window [rows, cols] (positive-step slices within the
        image), as a new bool array of the window's size."""
        y0, y1, _ = rows.indices(self.height)
        x0, x1, _ = cols.indices(self.width)
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), bool)
        crop_rows, crop_cols = self.region(i)
        top, bottom = max(y0, crop_rows.start), min(y1, crop_rows.stop)
        left, right = max(x0, crop_cols.start), min(x1, crop_cols.stop)
        if top < bottom and left < right:
            out[top - y0 : bottom - y0, left - x0 : right - x0] = self.crops[i][
                top - crop_rows.start : bottom - crop_rows.start,
                left - crop_cols.start : right - crop_cols.start,
            ]
        return out

    def tight_region(self, i: int) -> tuple[slice, slice] | None:
        """Row and column slices of the smallest box holding mask i; None if empty."""
        crop = self.crops[i]
        rows = np.flatnonzero(crop.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(crop.any(axis=0))
        x0, y0 = self.origins[i].tolist()
        return (
            slice(y0 + int(rows[0]), y0 + int(rows[-1]) + 1),
            slice(x0 + int(cols[0]), x0 + int(cols[-1]) + 1),
        )

    def areas(self) -> np.ndarray:
        """int64 [N]: pixels in each mask."""
        return np.array([np.count_nonzero(c) for c in self.crops], np.int64)

    def shifted(self, dx: int, dy: int, height: int, width: int) -> BoxMasks:
        """The same masks placed (dx, dy) further into a height x width image (a tile's
        masks in the frame of the whole image)."""
        return BoxMasks(self.crops, self.origins + np.array([dx, dy]), height, width)

    def scaled(self, factor: int) -> BoxMasks:
        """Every pixel blown up to factor x factor (nearest neighbour)."""
        crops = tuple(np.repeat(np.repeat(c, factor, axis=0), factor, axis=1) for c in self.crops)
        return BoxMasks(crops, self.origins * factor, self.height * factor, self.width * factor)
