"""Speed and peak memory of `mrcnn segment` against the network alone and a naive loop.

One invocation measures, on the same images and the same seeded random weights (no COCO
checkpoint needed; --score-thr 0 so every image has 100 detections):

  floor   the eager fp32 network alone (transform, backbone, RPN, RoI heads; no mask
          pasting, no files): what any tool must pay at least, in torchvision's numbers;
  naive   the loop people write: torchvision's full model, then an overlay JPEG, a PNG of
          the masks and a JSON file with RLE, one after another;
  mrcnn   `mrcnn segment --save overlay,masks,coco` for each --backend (torch: exact
          torchvision; openvino: dense layers compiled by OpenVINO) and --precision asked
          for. OpenVINO conversions go to a temp cache made warm before timing (a first
          run converts once: ~15-20 s for an R50 on two cores, not counted here).

Each runs in its own process, started by a small parent that reads its peak RSS (a child
forked from a big Python process would count the parent's memory too). Times cover the
image loop only (model loading excluded for all three). Printed as images/s and ratios
against the floor and the naive loop measured in the same run. Usage:

  python benchmarks/bench_speed.py                       # 6 COCO images + 1 at 4000x3000
  python benchmarks/bench_speed.py --limit 3 --large 0 --precisions fp32,bf16
  python benchmarks/bench_speed.py --backends torch,openvino --large 0
  python benchmarks/bench_speed.py --video 12 --train 20 # also video frames/s, train steps/s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
COCO_IMAGES = SHARED / "coco_val_mini" / "images"
CLIP = SHARED / "video" / "vtest_pets2009_people_15s.mp4"

MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
    "text=True); sys.stderr.write(r.stderr); print(r.stdout); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)

FLOOR = r"""
import json, sys, time
import cv2, torch
from torchvision.models.detection import {arch}
torch.manual_seed(0)
model = {arch}(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0).eval()
images = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in sys.argv[1:]]
t0 = time.perf_counter()
with torch.inference_mode():
    for rgb in images:
        x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        batch, _ = model.transform([x])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        model.roi_heads(features, proposals, batch.image_sizes)
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""

NAIVE = r"""
import json, sys, time
from pathlib import Path
import cv2, numpy as np, torch
from pycocotools import mask as mask_utils
from torchvision.models.detection import {arch}
torch.manual_seed(0)
model = {arch}(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0).eval()
out, files = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
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


def measured(cmd: list[str]) -> tuple[dict, float]:
    """The command's JSON line on stdout and its peak RSS in MiB (read by a small parent)."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    rss_mib = int(lines[-1]) / 1024
    document = json.loads("\n".join(lines[:-1]))
    return document, rss_mib


def mrcnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "mrcnn_cli", *args, "--json", "--quiet"]


def large_images(folder: Path, count: int) -> list[Path]:
    import cv2

    paths = []
    for i, src in enumerate(sorted(COCO_IMAGES.glob("*.jpg"))[:count]):
        big = cv2.resize(cv2.imread(str(src)), (4000, 3000), interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"large_{i}.jpg")
        cv2.imwrite(str(paths[-1]), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return paths


def bench_images(tmp: Path, name: str, files: list[Path], args) -> list[dict]:
    listing = tmp / f"{name}.txt"
    listing.write_text("\n".join(map(str, files)))
    rows = []

    def add(variant: str, seconds: float, rss: float) -> None:
        rows.append({"size": name, "variant": variant, "images": len(files),
                     "seconds": seconds, "images_per_s": len(files) / seconds,
                     "peak_rss_mib": rss})  # fmt: skip

    script = tmp / "floor.py"
    script.write_text(FLOOR.format(arch=args.arch))
    doc, rss = measured([sys.executable, str(script), *map(str, files)])
    add("floor (network alone, eager fp32)", doc["seconds"], rss)
    if not args.skip_naive:
        (tmp / f"naive_{name}").mkdir()
        script = tmp / "naive.py"
        script.write_text(NAIVE.format(arch=args.arch))
        doc, rss = measured([sys.executable, str(script), str(tmp / f"naive_{name}"),
                             *map(str, files)])  # fmt: skip
        add("naive torchvision loop", doc["seconds"], rss)
    for backend, precision in variants(args):
        out = tmp / f"ours_{name}_{backend}_{precision}"
        cmd = mrcnn("segment", str(listing), "--out", str(out), "--model", args.arch,
                    "--random-weights", "0", "--score-thr", "0", "--device", "cpu",
                    "--save", "overlay,masks,coco", "--precision", precision,
                    "--backend", backend)  # fmt: skip
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        doc, rss = measured(cmd)
        add(f"mrcnn segment {backend} {precision}", doc["seconds"], rss)
    floor = rows[0]["seconds"]
    naive = rows[1]["seconds"] if not args.skip_naive else None
    for row in rows:
        row["x_floor"] = floor / row["seconds"]
        row["x_naive"] = naive / row["seconds"] if naive else None
    return rows


def variants(args) -> list[tuple[str, str]]:
    """(backend, precision) pairs to run, torch first."""
    return [(b, p) for b in args.backends.split(",") for p in args.precisions.split(",")]


def warm_openvino_cache(tmp: Path, args) -> None:
    """Convert once into a temp cache, so no timed run pays the conversion."""
    if "openvino" not in args.backends.split(","):
        return
    os.environ["MRCNN_CACHE_DIR"] = str(tmp / "cache")
    probe = next(iter(sorted(COCO_IMAGES.glob("*.jpg"))))
    subprocess.run(mrcnn("segment", str(probe), "--out", str(tmp / "warm"), "--model", args.arch,
                         "--random-weights", "0", "--device", "cpu", "--backend", "openvino"),
                   check=True, capture_output=True)  # fmt: skip


def bench_video(tmp: Path, frames: int, args) -> list[dict]:
    rows = []
    for backend, precision in variants(args):
        cmd = [sys.executable, "-m", "mrcnn_cli", "video", str(CLIP), "--out",
               str(tmp / f"video_{backend}_{precision}"), "--model", args.arch,
               "--random-weights", "0", "--score-thr", "0", "--device", "cpu", "--max-frames",
               str(frames), "--precision", precision, "--backend", backend, "--json",
               "--quiet"]  # fmt: skip
        doc, rss = measured(cmd)
        rows.append({"what": f"mrcnn video {backend} {precision}", "frames": doc["processed"],
                     "frames_per_s": doc["rate"], "peak_rss_mib": rss})  # fmt: skip
    return rows


def bench_train(tmp: Path, steps: int, args) -> list[dict]:
    data = tmp / "shapes"
    subprocess.run([sys.executable, "-m", "mrcnn_cli", "synth", "--out", str(data), "--train",
                    "64", "--val", "0"], check=True, capture_output=True)  # fmt: skip
    rows = []
    for precision in args.precisions.split(","):
        run = tmp / f"train_{precision}"
        subprocess.run([sys.executable, "-m", "mrcnn_cli", "train", "--images",
                        str(data / "train" / "images"), "--ann",
                        str(data / "train" / "instances.json"), "--out", str(run), "--steps",
                        str(steps), "--warmup", "2", "--precision", precision, "--quiet"],
                       check=True)  # fmt: skip
        history = json.loads((run / "metrics.json").read_text())
        rate = [h["steps_per_s"] for h in history if "steps_per_s" in h][-1]
        rows.append({"what": f"mrcnn train (compact model, batch 4) --precision {precision}",
                     "steps_per_s": rate})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=COCO_IMAGES)
    ap.add_argument("--limit", type=int, default=6, help="COCO images (640x480 class)")
    ap.add_argument("--large", type=int, default=1, help="generated 4000x3000 images")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--backends", default="torch,openvino", help="torch, openvino or both")
    ap.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the tool's own")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--video", type=int, default=0, help="frames of the pets clip per precision")
    ap.add_argument("--train", type=int, default=0, help="training steps per precision")
    args = ap.parse_args()

    report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
                    platform.machine(), "python": platform.python_version()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        warm_openvino_cache(tmp, args)
        rows = []
        if args.limit:
            rows += bench_images(tmp, "640x480", sorted(args.images.glob("*.jpg"))[: args.limit],
                                 args)  # fmt: skip
        if args.large:
            rows += bench_images(tmp, "4000x3000", large_images(tmp, args.large), args)
        report["images"] = rows
        if args.video:
            report["video"] = bench_video(tmp, args.video, args)
        if args.train:
            report["train"] = bench_train(tmp, args.train, args)

    print(f"{args.arch}, seeded random weights, 100 detections per image; x floor / x naive: "
          "speed relative to those rows of the same run")  # fmt: skip
    for row in report["images"]:
        naive = f"{row['x_naive']:5.2f}" if row["x_naive"] else "    -"
        print(f"  {row['size']:9s} {row['variant']:34s} {row['images_per_s']:6.3f} images/s  "
              f"x floor {row['x_floor']:5.2f}  x naive {naive}  "
              f"peak RSS {row['peak_rss_mib']:6.0f} MiB")  # fmt: skip
    for row in report.get("video", []):
        print(f"  {row['what']:46s} {row['frames_per_s']:6.3f} frames/s  "
              f"peak RSS {row['peak_rss_mib']:6.0f} MiB")  # fmt: skip
    for row in report.get("train", []):
        print(f"  {row['what']:56s} {row['steps_per_s']:6.2f} steps/s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
