"""`mrcnn segment` with the local engine vs `--engine ray` with 1 and 2 workers.

Same images, same model, same options, one invocation, each run a fresh `mrcnn`
process into a fresh folder (the local engine also with OMP_NUM_THREADS=1 and 2, the
thread counts of Ray workers with 1 and 2 CPUs). Prints per run the wall time of the
whole command (Ray's start, worker start and model loads included), the summary's
images/s (its clock starts before the first image: the local engine has loaded its
model by then, the Ray workers load theirs inside it) and whether the outputs equal
the local engine's with the same torch thread count.

Usage:
  python benchmarks/bench_ray.py [--images DIR] [--limit 20] [--model demo]
  python benchmarks/bench_ray.py --model maskrcnn_resnet50_fpn --random-weights 0 --limit 6
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO_IMAGES = ROOT.parent / "shared" / "data" / "coco_val_mini" / "images"


def digest(out: Path) -> str:
    """Of every output file but the journal (a folder's bytes, for comparing runs)."""
    h = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file() and ".mrcnn" not in p.parts):
        h.update(str(path.relative_to(out)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def run(name: str, args: list[str], out: Path, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mrcnn_cli", *args, "--out", str(out), "--json"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env})  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    return {"name": name, "wall_s": wall, "rate": summary["rate"], "digest": digest(out),
            "processed": summary["processed"], "seconds": summary["seconds"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, default=COCO_IMAGES)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--random-weights", default=None)
    parser.add_argument("--score-thr", default="0")
    parser.add_argument("--runs", default=None, help="comma-separated run numbers (0-5)")
    args = parser.parse_args()
    images = sorted(args.images.glob("*.jpg"))[: args.limit]
    common = ["segment", *map(str, images), "--model", args.model, "--device", "cpu",
              "--score-thr", args.score_thr, "--save", "overlay,masks,coco"]  # fmt: skip
    if args.random_weights is not None:
        common += ["--random-weights", args.random_weights]
    # (name, extra arguments, environment, torch threads: whose files it must equal).
    # A Ray worker's torch uses as many threads as its CPUs (Ray sets OMP_NUM_THREADS);
    # CPU kernels round differently with another thread count, so files are compared
    # with the local run of the same thread count.
    one = {"OMP_NUM_THREADS": "1"}
    runs = [
        ("local, torch default", [], {}, None),
        ("local, OMP_NUM_THREADS=1", [], one, 1),
        ("local, OMP_NUM_THREADS=2", [], {"OMP_NUM_THREADS": "2"}, 2),
        ("ray, 1 worker x 1 CPU", ["--engine", "ray", "--num-workers", "1"], {}, 1),
        ("ray, 2 workers x 1 CPU", ["--engine", "ray", "--num-workers", "2"], {}, 1),
        ("ray, 1 worker x 2 CPU", ["--engine", "ray", "--num-workers", "1",
                                   "--cpus-per-worker", "2"], {}, 2),
    ]  # fmt: skip
    if args.runs:
        runs = [runs[int(i)] for i in args.runs.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        rows = [run(name, common + extra, Path(tmp) / f"out{i}", env) for i, (name, extra, env, _)
                in enumerate(runs)]  # fmt: skip
    local_of = {
        threads: row["digest"]
        for row, (name, *_, threads) in zip(rows, runs)
        if name.startswith("local") and threads
    }
    print(f"{len(images)} images from {args.images}, model {args.model}")
    print(f"{'run':28}{'wall s':>9}{'images/s':>10}{'run s':>8}  files equal local's")
    for row, (*_, threads) in zip(rows, runs):
        same: object = row["digest"] == local_of[threads] if threads in local_of else "n/a"
        if row["name"].startswith("local"):
            same = "-"
        print(f"{row['name']:28}{row['wall_s']:9.1f}{row['rate']:10.3f}{row['seconds']:8.1f}"
              f"  {same}")  # fmt: skip


if __name__ == "__main__":
    main()
