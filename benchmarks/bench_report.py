"""The run report at scale: build time and size of report.html, and how fast it opens.

A fake model: N images of 0-9 detections (5 on average, COCO's 80 classes, small RLE
strings), recorded in the journal as the engine's writer does; then report.html is
built from the journal as at the end of a run (timed: best of `--repeat`). With
Chromium installed, the page is also opened headless and the time from navigation
start to the first gallery page drawn is read from the page (`--no-browser` skips it).

Usage:  python benchmarks/bench_report.py [--n 20000] [--repeat 3] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HASH = "0123456789abcdef"


def fake_results(rng: random.Random, image_id: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(rng.randint(0, 9)):
        x, y = rng.random() * 500, rng.random() * 400
        counts = "".join(rng.choice("0123456789:;<=>?@ABCDEFGHIJKLMNO") for _ in range(40))
        out.append({
            "image_id": image_id,
            "category_id": rng.randint(1, 80),
            "bbox": [round(x, 2), round(y, 2), round(rng.random() * 100, 2),
                     round(rng.random() * 100, 2)],
            "score": round(0.5 + rng.random() / 2, 5),
            "segmentation": {"size": [480, 640], "counts": counts},
        })  # fmt: skip
    return out


def page_ready_ms(report: Path, profile: Path, view: str = "", loads: int = 3) -> float | None:
    """Milliseconds from navigation start until the page drew its first gallery page
    (median of `loads`); `view` is the address's state, e.g. `#class=x&sort=lowest`."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={profile}", "--dump-dom", report.as_uri() + view]  # fmt: skip
    times = []
    for _ in range(loads):
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        found = re.search(r'data-ready-ms="(\d+)"', dom)
        if found is None:
            return None
        times.append(float(found.group(1)))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    from mrcnn_cli.journal import Journal
    from mrcnn_cli.progress import RunSummary
    from mrcnn_cli.writers.report import REPORT_FILE, ReportRun, write_run_report

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_report_"))
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    rng = random.Random(0)
    journal = Journal(out)
    rels = [f"batch{i // 1000:03d}/IMG_{i:06d}.jpg" for i in range(args.n)]
    detections = 0
    for i, rel in enumerate(rels):
        results = fake_results(rng, i + 1)
        detections += len(results)
        journal.record(rel, source=f"/data/{rel}", image_id=i + 1, width=640, height=480,
                       results=results, settings_hash=HASH)  # fmt: skip
    journal.close()
    names = ("__background__", *[f"class_{k:02d}" for k in range(1, 81)])
    ids = tuple(range(81))
    run = ReportRun("segment", out, ["/data"], "maskrcnn_resnet50_fpn", {},
                    ("overlay", "coco", "report"))  # fmt: skip
    summary = RunSummary(total=args.n, processed=args.n, skipped=0, detections=detections,
                         seconds=1.0)  # fmt: skip
    best = float("inf")
    for _ in range(args.repeat):
        fresh = Journal(out)  # a run's end reads the journal it wrote; index built anew
        start = time.perf_counter()
        failed = write_run_report(out / REPORT_FILE, run, summary, fresh, rels, HASH, names, ids)
        best = min(best, time.perf_counter() - start)
        assert not failed, failed
    size = (out / REPORT_FILE).stat().st_size
    print(f"images              {args.n:,}")
    print(f"detections          {detections:,}")
    print(f"build report.html   {best:.2f} s (best of {args.repeat}, journal index included)")
    print(f"report.html size    {size / 2**20:.2f} MiB ({size / args.n:.0f} bytes per image)")
    if not args.no_browser:
        ready = page_ready_ms(out / REPORT_FILE, work / "profile")
        if ready is not None:
            print(f"page ready          {ready:.0f} ms (headless Chromium, first gallery page)")
        view = "#class=class_07&sort=lowest"
        ready = page_ready_ms(out / REPORT_FILE, work / "profile", view)
        if ready is not None:
            print(f"page ready, {view}  {ready:.0f} ms (filtered and sorted at load)")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
