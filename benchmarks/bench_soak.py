"""Soak: thousands of small images through `mrcnn segment --model demo`; memory, open file
descriptors and threads must stay flat.

The run is a child process; this script samples its /proc entries every half second
(resident memory, open descriptors, threads) against the number of images done so far
(overlays on disk), then reports peak RSS from image 100 to the end relative to the RSS
at image 100, and the ranges of descriptors and threads. Usage:

  python benchmarks/bench_soak.py              # 2000 images, all three outputs
  python benchmarks/bench_soak.py --images 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def proc_sample(pid: int) -> tuple[int, int, int] | None:
    """(RSS in KiB, open descriptors, threads) of a live process, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # exited, not yet reaped
        return None
    rss = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"].strip())
    return rss, fds, threads


def count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".jpg"))
    except FileNotFoundError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=100, help="image from which memory must be flat")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "mrcnn_cli", "synth", "--out", str(data),
                        "--train", str(args.images), "--val", "0", "--seed", "5"],
                       check=True, capture_output=True)  # fmt: skip
        images, out = data / "train" / "images", tmp / "out"
        cmd = [sys.executable, "-m", "mrcnn_cli", "segment", str(images), "--out", str(out),
               "--model", "demo", "--device", "cpu", "--save", "overlay,masks,coco",
               "--json", "--quiet"]  # fmt: skip
        started = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        samples = []  # (images done, rss KiB, fds, threads)
        while child.poll() is None:
            sample = proc_sample(child.pid)
            if sample is not None:
                samples.append((count_files(out / "overlays"), *sample))
            time.sleep(0.5)
        summary = json.loads(child.stdout.read())
        seconds = time.perf_counter() - started

    steady = [s for s in samples if s[0] >= args.warm]
    if not steady:
        raise SystemExit("the run ended before the warm-up point; use more --images")
    base = steady[0][1]
    peak = max(s[1] for s in steady)
    report = {
        "images": args.images,
        "processed": summary["processed"],
        "failed": summary["failed"],
        "seconds": round(seconds, 1),
        "images_per_s": round(summary["rate"], 2),
        "rss_mib_at_warm": round(base / 1024, 1),
        "peak_rss_mib_after_warm": round(peak / 1024, 1),
        "peak_over_warm": round(peak / base, 3),
        "fds_range": [min(s[2] for s in steady), max(s[2] for s in steady)],
        "threads_range": [min(s[3] for s in steady), max(s[3] for s in steady)],
        "samples": len(samples),
    }
    print(
        f"{report['processed']} of {args.images} images in {report['seconds']} s "
        f"({report['images_per_s']} images/s); RSS at image {args.warm}: "
        f"{report['rss_mib_at_warm']} MiB, peak after it: {report['peak_rss_mib_after_warm']} MiB "
        f"(x{report['peak_over_warm']}); open fds {report['fds_range']}, "
        f"threads {report['threads_range']}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
