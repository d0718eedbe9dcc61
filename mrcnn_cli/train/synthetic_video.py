"""Seeded synthetic clips with exact tracking ground truth: shapes gliding over a scene.

Why: a tracker is judged by how it keeps identities, and real clips have no ground truth
here. Each object is one of the shapes the demo model knows (`synthetic.py`), moving at
constant speed and bouncing off the borders, so objects pass in front of each other
(the later one occludes the earlier); an object can also be hidden for some frames
(it left the view). The ground truth per frame is each kept object's id and the box of
its visible pixels, written as a MOTChallenge file that `trackers.eval` scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from mrcnn_cli.atomic import atomic_path, write_text
from mrcnn_cli.train.synthetic import (
    CATEGORY_NAMES,
    SceneConfig,
    SceneLayout,
    SceneObject,
    _background,
    _fill,
    _random_colour,
    _shape_mask,
    compose,
    visible_masks,
)


@dataclass(frozen=True)
class MovingObject:
    """One object of a clip: its class, size, where its centre starts, its velocity
    (px per frame) and the frames it is out of view."""

    category_id: int
    extent: float
    start: tuple[float, float]
    velocity: tuple[float, float]
    hidden: range = range(0)


@dataclass
class Clip:
    """RGB frames and, per frame, (object id, category id, visible box xyxy) of each object
    in view; ids start at 1."""

    frames: list[np.ndarray] = field(default_factory=list)
    truth: list[list[tuple[int, int, tuple[int, int, int, int]]]] = field(default_factory=list)

    def mot_text(self) -> str:
        """The ground truth as a MOTChallenge file (frames from 1)."""
        lines = []
        for index, objects in enumerate(self.truth):
            for object_id, _, (x0, y0, x1, y1) in objects:
                # MOT17 ground-truth columns: consider=1, class=1 (what scorers count), visibility
                lines.append(f"{index + 1},{object_id},{x0},{y0},{x1 - x0},{y1 - y0},1,1,1.0")
        return "".join(line + "\n" for line in lines)


def _bounce(position: float, low: float, high: float) -> float:
    """`position` folded into [low, high] as a ball bouncing between two walls would be."""
    span = high - low
    if span <= 0:
        return low
    p = (position - low) % (2 * span)
    return low + (p if p <= span else 2 * span - p)


def random_objects(
    rng: np.random.Generator,
    count: int,
    size: int,
    speed: tuple[float, float] = (1.0, 3.0),
    extent: tuple[float, float] = (0.2, 0.32),
) -> list[MovingObject]:
    """`count` objects of random class, size, start and direction, within the frame."""
    objects = []
    for _ in range(count):
        diameter = float(rng.uniform(*extent) * size)
        margin = diameter / 2 + 1
        start = tuple(float(v) for v in rng.uniform(margin, size - margin, size=2))
        angle, pace = rng.uniform(0, 2 * np.pi), rng.uniform(*speed)
        velocity = (float(pace * np.cos(angle)), float(pace * np.sin(angle)))
        category = int(rng.integers(1, len(CATEGORY_NAMES) + 1))
        objects.append(MovingObject(category, diameter, start, velocity))  # type: ignore[arg-type]
    return objects


def _silhouette(
    rng: np.random.Generator, obj: MovingObject, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The object's mask centred in the frame, and its bounding box's half sizes."""
    for _ in range(50):
        mask = _shape_mask(rng, obj.category_id, size, obj.extent)
        ys, xs = np.nonzero(mask)
        if len(xs):
            break
    centre = np.array([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2])
    shift = np.float32([[1, 0, size / 2 - centre[0]], [0, 1, size / 2 - centre[1]]])
    moved = cv2.warpAffine(mask.astype(np.uint8), shift, (size, size), flags=cv2.INTER_NEAREST)
    half = np.array([(xs.max() - xs.min()) / 2, (ys.max() - ys.min()) / 2])
    return moved.astype(bool), half


def _translated(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    size = image.shape[1], image.shape[0]
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, shift, size, flags=cv2.INTER_NEAREST)


def render_clip(
    objects: Sequence[MovingObject], frames: int, size: int = 128, seed: int = 0
) -> Clip:
    """The clip of `objects` over `frames` frames of a `size` px square scene."""
    rng = np.random.default_rng(seed)
    background, base = _background(rng, size)
    colours: list[np.ndarray] = [base]
    shapes = []
    for obj in objects:
        mask, half = _silhouette(rng, obj, size)
        colour = _random_colour(rng, colours)
        colours.append(colour)
        shapes.append((mask, half, _fill(rng, size, colour, [base])))
    config = SceneConfig()
    clip = Clip()
    for t in range(frames):
        placed: list[SceneObject] = []
        ids: list[int] = []
        for k, (obj, (mask, half, fill)) in enumerate(zip(objects, shapes, strict=True)):
            if t in obj.hidden:
                continue
            x = _bounce(obj.start[0] + obj.velocity[0] * t, half[0], size - 1 - half[0])
            y = _bounce(obj.start[1] + obj.velocity[1] * t, half[1], size - 1 - half[1])
            dx, dy = round(x - size / 2), round(y - size / 2)
            moved = _translated(mask.astype(np.uint8), dx, dy).astype(bool)
            placed.append(SceneObject(obj.category_id, moved, _translated(fill, dx, dy)))
            ids.append(k + 1)
        image, _ = compose(SceneLayout(background, tuple(placed)), config)
        visible = visible_masks([o.full_mask for o in placed], config.min_visible_fraction,
                                config.min_visible_pixels)  # fmt: skip
        truth = []
        for object_id, obj, vis in zip(ids, placed, visible, strict=True):
            if vis is None:
                continue  # too hidden to annotate (compose leaves it out too)
            ys, xs = np.nonzero(vis)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            truth.append((object_id, obj.category_id, box))
        clip.frames.append(image)
        clip.truth.append(truth)
    return clip


def write_clip(path: Path, frames: Sequence[np.ndarray], fps: int = 10) -> Path:
    """An H.264 MP4 of RGB `frames`, near-lossless (the model sees what was drawn)."""
    import av

    height, width = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps, options={"crf": "4"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    return path


def write_truth(path: Path, clip: Clip) -> Path:
    write_text(path, clip.mot_text())
    return path


GT_FOLDER = "gt"


def clip_name(index: int) -> str:
    return f"clip{index:02d}"


def write_clip_set(
    out: Path,
    clips: int = 6,
    frames: int = 90,
    objects: int = 4,
    size: int = 128,
    speed: tuple[float, float] = (1.5, 4.0),
    seed: int = 100,
    fps: int = 10,
    image_frames: bool = False,
) -> list[tuple[Path, Path]]:
    """`clips` generated clips under `out` with their ground truth; (clip, truth) pairs.

    Clip k is drawn from seed `seed + k` (what `benchmarks/bench_tracking.py` scores):
    `out/clipNN.mp4`, or with `image_frames` a folder `out/clipNN/` of PNG frames
    (`000001.png`, ...), and `out/gt/clipNN.mot.txt`, MOTChallenge ground truth named as
    `mrcnn video --track --save mot` names its output, so `trackers eval --gt-dir
    out/gt --tracker-dir <results>` pairs each clip's truth with its tracks.
    """
    written = []
    for k in range(clips):
        rng = np.random.default_rng(seed + k)
        moving = random_objects(rng, objects, size, speed)
        clip = render_clip(moving, frames, size, seed=seed + k)
        name = clip_name(k)
        if image_frames:
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            for index, image in enumerate(clip.frames):
                with atomic_path(folder / f"{index + 1:06d}.png") as tmp:
                    if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                        raise OSError(f"cannot write {folder / f'{index + 1:06d}.png'}")
            source = folder
        else:
            source = write_clip(out / f"{name}.mp4", clip.frames, fps)
        written.append((source, write_truth(out / GT_FOLDER / f"{name}.mot.txt", clip)))
    return written
