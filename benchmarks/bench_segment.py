"""Throughput and peak memory of `mrcnn segment` against a naive torchvision loop.

Both run in the same invocation, on the same images, with the same seeded random
weights (no COCO checkpoint needed), each in its own subprocess so peak RSS is its own:

  baseline: for each image, torchvision's full model (full-image mask pasting),
            then an overlay JPEG, a PNG of the masks and a JSON file, one after another;
  mrcnn:    `mrcnn segment --save overlay,masks,coco` (batched, threaded decode/write,
            box-local mask pasting).

Printed as ratios against the baseline (machines are noisy; absolute numbers are not
a target). Usage:
  python benchmarks/bench_segment.py [--images DIR] [--limit N] [--batch-size B]
  python benchmarks/bench_segment.py --large   # one 4000x3000 image: the pasting memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO_IMAGES = ROOT.parent / "shared" / "data" / "coco_val_mini" / "images"

BASELINE = r"""
import json, sys, time
from pathlib import Path
import cv2, numpy as np, torch
from pycocotools import mask as mask_utils
from torchvision.models.detection import {arch}
torch.manual_seed(0)
model = {arch}(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0).eval()
files, out = [Path(p) for p in sys.argv[2:]], Path(sys.argv[1])
t0 = time.perf_counter()
with torch.inference_mode():
    for f in files:
        bgr = cv2.imread(str(f)); rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        r = model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]
        masks = (r["masks"][:, 0] > 0.5).numpy()
        over = bgr.copy()
        for m in masks:
            over[m] = (0.5 * over[m] + [0, 0, 127]).astype(np.uint8)
        cv2.imwrite(str(out / (f.stem + ".jpg")), over)
        ids = np.zeros(masks.shape[1:], np.uint16)
        for k in range(len(masks) - 1, -1, -1):
            ids[masks[k]] = k + 1
        cv2.imwrite(str(out / (f.stem + ".png")), ids)
        res = []
        rows = zip(masks, r["boxes"].tolist(), r["scores"].tolist(), r["labels"].tolist())
        for m, b, s, l in rows:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            res.append({{"bbox": b, "score": s, "category_id": l, "segmentation": rle}})
        (out / (f.stem + ".json")).write_text(json.dumps(res))
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""


MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of `cmd`, measured by a fresh parent of its own."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], check=True, capture_output=True, text=True
    ).stdout
    seconds = time.perf_counter() - t0
    return seconds, int(out.strip().splitlines()[-1]) / 1024


def make_large_image(folder: Path) -> list[Path]:
    import cv2

    src = cv2.imread(str(sorted(COCO_IMAGES.glob("*.jpg"))[0]))
    big = cv2.resize(src, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    path = folder / "large_4000x3000.jpg"
    cv2.imwrite(str(path), big)
    return [path]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=COCO_IMAGES)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the tool's own")
    ap.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    ap.add_argument("--large", action="store_true", help="one 4000x3000 image instead")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_large_image(tmp) if args.large else sorted(args.images.glob("*.jpg"))
        files = files[: args.limit] if args.limit else files
        list_file = tmp / "inputs.txt"
        list_file.write_text("\n".join(str(f) for f in files))
        rows = {}
        ours_cmd = [
            sys.executable,
            "-m",
            "mrcnn_cli",
            "segment",
            str(list_file),
            "--out",
            str(tmp / "ours"),
            "--model",
            args.arch,
            "--random-weights",
            "0",
            "--score-thr",
            "0",
            "--save",
            "overlay,masks,coco",
            "--quiet",
        ]
        if args.batch_size:
            ours_cmd += ["--batch-size", str(args.batch_size)]
        rows["mrcnn segment"] = run_measured(ours_cmd)
        if not args.skip_baseline:
            (tmp / "base").mkdir()
            script = tmp / "baseline.py"
            script.write_text(BASELINE.format(arch=args.arch))
            rows["naive torchvision loop"] = run_measured(
                [sys.executable, str(script), str(tmp / "base"), *map(str, files)]
            )
    n = len(files)
    print(f"{n} image(s), {args.arch}, random weights, score-thr 0, overlay+masks+coco")
    base = rows.get("naive torchvision loop")
    for name, (sec, mib) in rows.items():
        line = f"  {name:24s} {n / sec:6.3f} images/s  {sec:7.1f} s  peak RSS {mib:7.0f} MiB"
        if base and name != "naive torchvision loop":
            line += f"  | speed x{base[0] / sec:.2f}, memory x{mib / base[1]:.2f} of baseline"
        print(line)
    print(json.dumps({k: {"seconds": v[0], "peak_rss_mib": v[1]} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
