"""`--engine ray` on a multi-node cluster started on this machine, with and without a node
lost mid-run, with inputs on disk and in S3 (moto's server on 127.0.0.1).

`ray.cluster_utils.Cluster`: a head with no CPUs (it runs the driver only) and two worker
nodes, each its own raylet with `--cpus-per-node` CPUs; two workers of one CPU each.
Runs, each into a fresh folder, same images and model:

  local             the local engine in this process, one torch thread (the reference files)
  ray               2 workers, images on disk
  ray, node lost    the same, one worker node removed after `--kill-after` images
                    (a new node joins right away, as an autoscaler would bring one)
  ray, s3://        2 workers, the images read by the workers from the S3 server

Per run: wall seconds (worker start and model loads included), the summary's images/s,
the steady images/s (first image done to last), images done and failed, and whether the
files equal the local engine's.

Usage:
  python benchmarks/bench_ray_cluster.py [--images DIR] [--limit 40] [--model demo]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO_IMAGES = ROOT.parent / "shared" / "data" / "coco_val_mini" / "images"
sys.path.insert(0, str(ROOT / "tests"))  # the moto server helper


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file() and ".mrcnn" not in p.parts):
        h.update(str(path.relative_to(out)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


class AfterImages:
    """Times the first and last image done; does `action` once after `n` images."""

    def __init__(self, n: int | None = None, action=None) -> None:
        self.n, self.action, self.done = n, action, 0
        self.first = self.last = 0.0

    def start(self, total, unit, description) -> None: ...
    def skip(self, n) -> None: ...
    def fail(self, item) -> None: ...
    def stop(self) -> None: ...

    def advance(self, n, detections) -> None:
        self.done += n
        self.last = time.perf_counter()
        self.first = self.first or self.last
        if self.n is not None and self.done >= self.n and self.action is not None:
            action, self.action = self.action, None
            action()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, default=COCO_IMAGES)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--kill-after", type=int, default=10)
    args = parser.parse_args()

    import ray
    import torch
    from helpers import moto_server, s3_env
    from ray.cluster_utils import Cluster

    from mrcnn_cli.config import ModelConfig, SegmentConfig
    from mrcnn_cli.distributed.ray_engine import RayOptions, run_segment_ray
    from mrcnn_cli.engine import run_segment

    images = sorted(args.images.glob("*.jpg"))[: args.limit]
    model = ModelConfig(model=args.model, device="cpu", score_thr=0.0, max_det=20)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-cluster-"))

    def cfg(name: str, inputs) -> SegmentConfig:
        return SegmentConfig(inputs=tuple(map(str, inputs)), out=tmp / name, model=model,
                             save=("overlay", "masks", "coco"))  # fmt: skip

    rows = []

    def record(name: str, folder: str, t0: float, summary, timer: AfterImages,
               reference: str | None) -> str:  # fmt: skip
        wall = time.perf_counter() - t0
        d = digest(tmp / folder)
        steady = (timer.done - 1) / max(timer.last - timer.first, 1e-9)
        rows.append((name, wall, summary.processed / max(summary.seconds, 1e-9), steady,
                     summary.processed, len(summary.failed), reference in (None, d)))  # fmt: skip
        return d

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    timer = AfterImages()
    summary = run_segment(cfg("local", images), timer)
    reference = record("local, 1 torch thread", "local", t0, summary, timer, None)

    with moto_server() as endpoint, tempfile.TemporaryDirectory() as home:
        os.environ.update(s3_env(endpoint, Path(home)))  # before Ray: its workers inherit it
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        for path in images:
            fs.put_file(str(path), f"bench/set/{path.name}")

        fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                "health_check_initial_delay_ms": 0}  # fmt: skip
        store = 100 * 1024 * 1024
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": store, "include_dashboard": False,
            "_system_config": fast})  # fmt: skip
        for _ in range(2):
            cluster.add_node(num_cpus=args.cpus_per_node, object_store_memory=store)
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        options = RayOptions(num_workers=2)
        try:
            t0 = time.perf_counter()
            timer = AfterImages()
            summary = run_segment_ray(cfg("ray", images), options, timer)
            record("ray, 2 workers on 2 nodes", "ray", t0, summary, timer, reference)

            def lose_a_node() -> None:
                actors = ray._private.state.actors().values()
                live = [a for a in actors if a["ActorClassName"] == "SegmentWorker"
                        and a["State"] == "ALIVE"]  # fmt: skip
                node = next(n for n in cluster.worker_nodes
                            if n.node_id == live[0]["Address"]["NodeID"])  # fmt: skip
                cluster.remove_node(node, allow_graceful=False)
                cluster.add_node(num_cpus=args.cpus_per_node, object_store_memory=store,
                                 wait=False)  # fmt: skip

            t0 = time.perf_counter()
            timer = AfterImages(args.kill_after, lose_a_node)
            summary = run_segment_ray(cfg("lost", images), options, timer)
            name = f"ray, node lost after {args.kill_after}"
            record(name, "lost", t0, summary, timer, reference)

            t0 = time.perf_counter()
            timer = AfterImages()
            summary = run_segment_ray(cfg("s3", ["s3://bench/set/"]), options, timer)
            record("ray, s3:// inputs", "s3", t0, summary, timer, reference)
        finally:
            ray.shutdown()
            cluster.shutdown()

    print(f"{len(images)} images, model {args.model}, {os.cpu_count()} CPUs on this machine, "
          f"2 worker nodes x {args.cpus_per_node} CPU")  # fmt: skip
    print("img/s: the summary's (worker start and model loads included); steady: from the")
    print("first image done to the last")
    print(f"{'run':28} {'wall s':>7} {'img/s':>6} {'steady':>6} {'done':>5} {'failed':>6}  "
          "files = local")  # fmt: skip
    for name, wall, rate, steady, done, failed, same in rows:
        print(f"{name:28} {wall:7.1f} {rate:6.2f} {steady:6.2f} {done:5d} {failed:6d}  {same}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
