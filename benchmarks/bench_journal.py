"""The resume journal at scale: record cost per image, final assembly time, peak memory.

A fake model: N images of 5 detections each (small RLE strings), recorded as the
engine's writer threads do, then predictions.json/images.json assembled as at the end
of a run. Two journals in one invocation, each phase in its own child process so its
peak RSS is its own (read by the parent with os.wait4):

  old: one JSON file per image under .mrcnn/records/ (temp file + rename each), and an
       assembly that loads every record into memory (the code of commit c26b147,
       copied below as the baseline);
  new: mrcnn_cli.journal: append-only segment per process, header index, streamed
       assembly.

Usage:  python benchmarks/bench_journal.py [--n 100000] [--dir /tmp/x] [--only new]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DETECTIONS = 5
HASH = "0123456789abcdef"


# --- the baseline: the journal before this change (commit c26b147), trimmed to what runs --
@dataclass(frozen=True)
class OldImageRecord:
    rel: str
    source: str
    image_id: int
    width: int
    height: int
    results: list[dict[str, Any]]
    settings_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "rel": self.rel,
            "source": self.source,
            "image_id": self.image_id,
            "width": self.width,
            "height": self.height,
            "num_detections": len(self.results),
            "results": self.results,
            "settings_hash": self.settings_hash,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OldImageRecord:
        return cls(
            rel=str(data["rel"]),
            source=str(data["source"]),
            image_id=int(data["image_id"]),
            width=int(data["width"]),
            height=int(data["height"]),
            results=list(data["results"]),
            settings_hash=str(data["settings_hash"]),
        )


class OldJournal:
    """Per-image records under `<out_dir>/.mrcnn/records/<rel>.json` (the old layout)."""

    def __init__(self, out_dir: Path) -> None:
        self.records_dir = Path(out_dir) / ".mrcnn" / "records"

    def record_path(self, rel: str) -> Path:
        from mrcnn_cli.writers import safe_rel

        rel = safe_rel(rel)
        return self.records_dir.joinpath(*rel.parent.parts, rel.name + ".json")

    def load(self, rel: str) -> OldImageRecord | None:
        try:
            data = json.loads(self.record_path(rel).read_text(encoding="utf-8"))
            return OldImageRecord.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record(self, rel, *, source, image_id, width, height, results, settings_hash):
        from mrcnn_cli.atomic import write_json
        from mrcnn_cli.writers import safe_rel

        record = OldImageRecord(str(safe_rel(rel)), str(source), int(image_id), int(width),
                                int(height), results, settings_hash)  # fmt: skip
        write_json(self.record_path(rel), record.to_json())
        return record

    def assemble(self, rels_in_order: Iterable[str], settings_hash=None, image_ids=None):
        from mrcnn_cli.writers.coco import image_entry

        results: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        for rel in rels_in_order:
            record = self.load(rel)
            stale = record is not None and settings_hash not in (None, record.settings_hash)
            if record is None or stale:
                continue
            image_id = record.image_id if image_ids is None else image_ids[record.rel]
            images.append(image_entry(image_id, record.rel, record.width, record.height))
            results.extend({**entry, "image_id": image_id} for entry in record.results)
        return results, images


# --- the fake run ------------------------------------------------------------------
def fake_rels(n: int) -> list[str]:
    return [f"batch{i // 1000:04d}/img{i:07d}.jpg" for i in range(n)]


def fake_results(rng: random.Random, image_id: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(DETECTIONS):
        x, y = rng.random() * 500, rng.random() * 400
        counts = "".join(rng.choice("0123456789:;<=>?@ABCDEFGHIJKLMNO") for _ in range(40))
        out.append({
            "image_id": image_id,
            "category_id": rng.randint(1, 90),
            "bbox": [round(x, 2), round(y, 2), round(rng.random() * 100, 2),
                     round(rng.random() * 100, 2)],
            "score": round(rng.random(), 5),
            "segmentation": {"size": [480, 640], "counts": counts},
        })  # fmt: skip
    return out


def child_record(kind: str, out: Path, n: int) -> dict[str, float]:
    from mrcnn_cli.journal import Journal

    journal = OldJournal(out) if kind == "old" else Journal(out)
    rng = random.Random(0)
    rels = fake_rels(n)
    payloads = [(rel, fake_results(rng, i + 1)) for i, rel in enumerate(rels[:1000])]
    spent = 0.0
    for i, rel in enumerate(rels):
        _, results = payloads[i % len(payloads)]
        if i >= len(payloads):
            results = [{**r, "image_id": i + 1} for r in results]
        t0 = time.perf_counter()
        journal.record(rel, source=f"/data/{rel}", image_id=i + 1, width=640, height=480,
                       results=results, settings_hash=HASH)  # fmt: skip
        spent += time.perf_counter() - t0
    return {"record_ms_per_image": 1000 * spent / n}


def child_assemble(kind: str, out: Path, n: int) -> dict[str, Any]:
    from mrcnn_cli.journal import Journal
    from mrcnn_cli.writers.coco import write_images_file, write_predictions

    rels = fake_rels(n)
    t0 = time.perf_counter()
    if kind == "old":
        journal = OldJournal(out)
        done = sum(journal.load(rel) is not None for rel in rels)  # the resume check
        t1 = time.perf_counter()
        results, images = journal.assemble(rels, HASH)
        write_predictions(out / "predictions.json", results)
        write_images_file(out / "images.json", images)
    else:
        journal = Journal(out)
        done = sum(journal.is_done(rel, HASH) for rel in rels)  # builds the index
        t1 = time.perf_counter()
        journal.write_coco(out / "predictions.json", out / "images.json", rels, HASH)
    t2 = time.perf_counter()
    assert done == n, done
    return {"resume_check_s": t1 - t0, "assemble_s": t2 - t1}


def child_inspect(kind: str, out: Path, n: int) -> dict[str, Any]:
    """Sizes and digests, measured in a child so the parent stays small (see run_child)."""
    state = [p for p in (out / ".mrcnn").rglob("*") if p.is_file()]
    digest = hashlib.sha256()
    for name in ("predictions.json", "images.json"):
        with open(out / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {
        "journal_mib": sum(p.stat().st_size for p in state) / 2**20,
        "journal_files": len(state),
        "predictions_mib": (out / "predictions.json").stat().st_size / 2**20,
        "sha256": digest.hexdigest(),
    }


def run_child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run a phase in a child; its JSON result and its peak RSS in MiB (Linux: KiB units).

    Linux keeps a process's peak RSS across fork and exec, so a child's figure is at
    least the parent's size when it was started: the parent holds nothing large.
    """
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with exit code {proc.returncode}")
    return json.loads(out), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--only", choices=["old", "new"], default=None)
    parser.add_argument("--child", nargs=3, metavar=("PHASE", "KIND", "OUT"))
    args = parser.parse_args()
    if args.child:
        phase, kind, out = args.child
        fn = {"record": child_record, "assemble": child_assemble, "inspect": child_inspect}[phase]
        print(json.dumps(fn(kind, Path(out), args.n)))
        return

    base = Path(tempfile.mkdtemp(prefix="bench_journal_", dir=args.dir))
    rows: dict[str, dict[str, float]] = {}
    digests: dict[str, str] = {}
    try:
        for kind in [args.only] if args.only else ["old", "new"]:
            out = base / kind
            rec, rec_rss = run_child(["--n", str(args.n), "--child", "record", kind, str(out)])
            asm, asm_rss = run_child(["--n", str(args.n), "--child", "assemble", kind, str(out)])
            seen, _ = run_child(["--n", str(args.n), "--child", "inspect", kind, str(out)])
            digests[kind] = seen.pop("sha256")
            rows[kind] = {**rec, **asm, "record_peak_rss_mib": rec_rss,
                          "assemble_peak_rss_mib": asm_rss, **seen}  # fmt: skip
        if len(rows) == 2:
            same = digests["old"] == digests["new"]
            print(f"predictions.json and images.json identical: {same}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.n} images x {DETECTIONS} detections (this parent's peak RSS: {parent:.1f} MiB)")
    keys = list(next(iter(rows.values())))
    print(
        f"{'':24}" + "".join(f"{k:>12}" for k in rows) + ("    old/new" if len(rows) == 2 else "")
    )
    for key in keys:
        line = f"{key:24}" + "".join(f"{rows[k][key]:12.3f}" for k in rows)
        if len(rows) == 2 and rows["new"][key]:
            line += f"  {rows['old'][key] / rows['new'][key]:9.2f}x"
        print(line)


if __name__ == "__main__":
    main()
