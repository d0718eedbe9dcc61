"""The Python API in one page: run it from the repository root with `python examples/api.py`.

It uses the small demo model that ships with the package (shapes: circle, square,
triangle), so it needs no download. For photos, use `Segmenter()` (the COCO model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mrcnn_cli import Segmenter, annotate, segment

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
OUT = Path("results_api")

# 1. One object, many images: load the model once, call it on arrays, paths or PIL images.
seg = Segmenter(model="demo", score_thr=0.5)
rgb = np.asarray(Image.open(IMAGES / "000001.png").convert("RGB"))
dets = seg(rgb)
print(f"{len(dets)} instances:", ", ".join(f"{n} {s:.2f}" for n, s in zip(dets.names, dets.scores)))

# 2. Detections filter like arrays; masks are [N, H, W] booleans in the image frame.
squares = dets[np.array(dets.names) == "square"]
print("square mask areas:", squares.masks.sum(axis=(1, 2)).tolist())

# 3. A preview image, and COCO results (exactly what `mrcnn segment --save coco` writes).
OUT.mkdir(exist_ok=True)
Image.fromarray(annotate(rgb, dets)).save(OUT / "preview.jpg")
print(json.dumps(dets.to_coco(image_id=1)[0])[:120], "...")

# 4. Batches: `predict` takes a list, `stream` any iterable (frames of a video, say).
all_dets = seg.predict(sorted(IMAGES.glob("*.png")), batch_size=2)
print("instances per image:", [len(d) for d in all_dets])

# 5. A whole job, resumable, the same as the command line (silent; returns the summary).
summary = segment(IMAGES, OUT / "job", segmenter=seg, save=("overlay", "masks", "coco"))
print(
    f"job: {summary.processed} processed, {summary.skipped} skipped, "
    f"{len(summary.failed)} failed, {summary.detections} detections"
)
