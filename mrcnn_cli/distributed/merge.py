"""`mrcnn merge`: the output folders of `--shard K/N` runs joined into one.

Checks first, writes after: every shard 0..N-1 is there exactly once, all were cut from
the same input list and made with the same settings, every input is in exactly one
shard, and every image of a shard is either done or listed as failed by it. Then the
per-image files (overlays, masks, videos) are hard-linked into the merged folder (copied
where the filesystem cannot link; moved with `move=True`), the shards' journals are
linked into its `.mrcnn/journal/` (so the merged folder resumes like an unsharded run),
and predictions.json/images.json are streamed in the order of the whole input list,
with the image ids assigned over the whole list, as one unsharded run writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.config import ExportOptions
from mrcnn_cli.errors import EXIT_SOME_FAILED, FailedItem, MrcnnError
from mrcnn_cli.journal import (
    FAILURES_FILE,
    JOURNAL_DIR,
    SEGMENT_SUFFIX,
    STATE_DIR,
    Journal,
    write_failures,
)
from mrcnn_cli.progress import RunSummary
from mrcnn_cli.shards import ShardItem, ShardManifest, read_manifests, shard_file_name
from mrcnn_cli.writers.report import REPORT_FILE, ReportRun, write_run_report
from mrcnn_cli.writers.run_files import IMAGES_FILE, PREDICTIONS_FILE, write_run_files


class IncompleteShardsError(MrcnnError):
    """A shard, or images of a shard, are missing: nothing was merged (exit code 1)."""

    exit_code = EXIT_SOME_FAILED


@dataclass
class MergeSummary:
    shards: int
    images: int = 0
    detections: int = 0
    linked: int = 0
    copied: int = 0
    moved: int = 0
    failed: list[FailedItem] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "images": self.images,
            "detections": self.detections,
            "files_linked": self.linked,
            "files_copied": self.copied,
            "files_moved": self.moved,
            "failed": len(self.failed),
            "seconds": round(self.seconds, 3),
            "failures": [{"path": str(f.path), "reason": f.reason} for f in self.failed],
        }


@dataclass(frozen=True)
class _Shard:
    folder: Path
    manifest: ShardManifest

    @property
    def name(self) -> str:
        return f"shard {self.manifest.shard} ({self.folder})"


def merge_shards(folders: Sequence[Path], out: Path, move: bool = False) -> MergeSummary:
    """Join shard output folders into `out`; raises MrcnnError (exit 2) when they do not
    fit together and IncompleteShardsError (exit 1) when something is missing."""
    start = time.perf_counter()
    shards = _collect(folders)
    _check_fit(shards)
    items = _check_cover(shards)
    failed = _check_done(shards)
    _prepare_out(out)
    summary = MergeSummary(shards=len(shards), failed=failed)
    for folder in dict.fromkeys(s.folder for s in shards):
        _bring_files(folder, out, move, summary)
    images = [it for it in items if it.kind == "image"]
    ids = {it.rel: it.image_id for it in images if it.image_id is not None}
    manifest = shards[0].manifest
    settings = manifest.settings_hash
    rels = [it.rel for it in images]
    journal = Journal(out)
    counts = journal.write_coco(out / PREDICTIONS_FILE, out / IMAGES_FILE, rels, settings, ids)
    summary.images, summary.detections = counts.images, counts.detections
    others = [k for k in manifest.save if k not in ("coco", "report")]  # csv, cvat, datasets
    if others and manifest.class_names:
        export = dict(manifest.export)
        version = str(export.pop("model_version", "mrcnn"))
        failed += write_run_files(out, others, journal, rels, settings, ids,
                                  manifest.class_names, manifest.category_ids,
                                  export=ExportOptions(**export),
                                  model_version=version)  # fmt: skip
    if "report" in manifest.save:  # from the merged journal, like the files above
        failed += _write_report(out, folders, manifest, journal, rels, ids, summary, failed, start)
    problem = write_failures(out, failed)
    if problem is not None:
        failed.append(problem)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_report(
    out: Path,
    folders: Sequence[Path],
    manifest: ShardManifest,
    journal: Journal,
    rels: list[str],
    ids: dict[str, int],
    merged: MergeSummary,
    failed: list[FailedItem],
    start: float,
) -> list[FailedItem]:
    """report.html of the whole job: the merged images, every shard's failures."""
    count = manifest.shard.count
    settings = {"shards": count, "settings_hash": manifest.settings_hash}
    run = ReportRun("merge", out, [str(f) for f in folders], save=manifest.save,
                    settings=settings)  # fmt: skip
    totals = RunSummary(
        total=merged.images + len(failed),
        processed=merged.images,
        skipped=0,
        failed=list(failed),
        detections=merged.detections,
        seconds=time.perf_counter() - start,
    )
    return write_run_report(out / REPORT_FILE, run, totals, journal, rels,
                            manifest.settings_hash, manifest.class_names,
                            manifest.category_ids)  # fmt: skip


# --- checks ------------------------------------------------------------------------
def _collect(folders: Sequence[Path]) -> list[_Shard]:
    if not folders:
        raise MrcnnError("give the output folders of the shards to merge")
    shards: dict[tuple[Path, int], _Shard] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise MrcnnError(f"{folder} is not a folder")
        manifests = read_manifests(folder)
        if not manifests:
            raise MrcnnError(
                f"{folder} holds no shard output (no {STATE_DIR}/shards/ manifest): "
                "make shards with `mrcnn segment --shard K/N`"
            )
        for manifest in manifests:
            shards.setdefault((folder.resolve(), manifest.shard.index), _Shard(folder, manifest))
    return sorted(shards.values(), key=lambda s: s.manifest.shard.index)


def _check_fit(shards: list[_Shard]) -> None:
    """Same N, same input list, same settings; each K once; none missing."""
    first = shards[0]
    count = first.manifest.shard.count
    for shard in shards[1:]:
        m = shard.manifest
        if m.shard.count != count:
            raise MrcnnError(
                f"{shard.name} was cut {m.shard.count} ways, {first.name} {count} ways"
            )
        if (m.inputs_digest, m.total_inputs) != (
            first.manifest.inputs_digest,
            first.manifest.total_inputs,
        ):
            raise MrcnnError(
                f"{shard.name} was cut from another input list than {first.name}: "
                "give every shard the same inputs"
            )
        if m.settings_hash != first.manifest.settings_hash:
            raise MrcnnError(
                f"{shard.name} was made with other settings than {first.name} "
                f"({m.settings_hash} vs {first.manifest.settings_hash}): rerun it with "
                "the same options"
            )
    seen: dict[int, _Shard] = {}
    for shard in shards:
        k = shard.manifest.shard.index
        if k in seen:
            raise MrcnnError(f"shard {k}/{count} is in two folders: {seen[k].folder} and "
                             f"{shard.folder}")  # fmt: skip
        seen[k] = shard
    missing = [k for k in range(count) if k not in seen]
    if missing:
        names = ", ".join(f"{k}/{count}" for k in missing)
        raise IncompleteShardsError(
            f"shard {names} missing: give the output folders of all {count} shards"
        )


def _check_cover(shards: list[_Shard]) -> list[ShardItem]:
    """Every input of the whole list in exactly one shard; the items in input order."""
    total = shards[0].manifest.total_inputs
    owner: dict[int, _Shard] = {}
    items: dict[int, ShardItem] = {}
    for shard in shards:
        for it in shard.manifest.items:
            if it.index in owner:
                raise MrcnnError(
                    f"{it.rel} is in two shards: {owner[it.index].name} and {shard.name}"
                )
            if not 0 <= it.index < total:
                raise MrcnnError(f"{shard.name}: item {it.rel} lies outside the input list")
            owner[it.index], items[it.index] = shard, it
    if len(items) != total:
        raise IncompleteShardsError(
            f"{total - len(items)} of {total} inputs are in no shard: the shard manifests "
            "do not add up (were shards rerun with other inputs?)"
        )
    return [items[i] for i in range(total)]


def _read_failures(path: Path) -> list[FailedItem]:
    failures = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            data = json.loads(line)
            failures.append(FailedItem(str(data["path"]), str(data["reason"])))
        except (ValueError, KeyError, TypeError):
            continue
    return failures


def _check_done(shards: list[_Shard]) -> list[FailedItem]:
    """The shards' failures (once each); raises if an image is neither done nor failed."""
    failed: dict[tuple[str, str], FailedItem] = {}
    for shard in shards:
        own = _read_failures(shard.folder / shard_file_name(FAILURES_FILE, shard.manifest.shard))
        failed.update(((str(f.path), f.reason), f) for f in own)
        failed_paths = {str(f.path) for f in own}
        journal = Journal(shard.folder)
        settings = shard.manifest.settings_hash
        not_done = [
            it
            for it in shard.manifest.items
            if it.kind == "image"
            and it.path not in failed_paths
            and not journal.is_done(it.rel, settings)
        ]
        if not_done:
            raise IncompleteShardsError(
                f"{shard.name} is not finished: {len(not_done)} image(s) neither done nor "
                f"failed, e.g. {not_done[0].rel}; rerun that shard"
            )
    return list(failed.values())


# --- files -------------------------------------------------------------------------
def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".mrcnn-write-test"):
            pass
        (out / ".mrcnn-write-test").unlink()
    except OSError as exc:
        raise MrcnnError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc


# Folders whose shard-tagged files are run-level files that merge rebuilds.
_RUN_FILE_DIRS = (".", "coco/annotations", "labelstudio", "yolo")


def _is_shard_file(rel: Path) -> bool:
    """The shards' own COCO and failure files and state: merged, not copied."""
    if rel.parts[0] == STATE_DIR:
        return True
    top = len(rel.parts) == 1
    names = (PREDICTIONS_FILE, IMAGES_FILE, FAILURES_FILE)
    tagged = ".shard-" in rel.name and rel.parent.as_posix() in _RUN_FILE_DIRS
    return (top and rel.name in names) or tagged


def _bring_files(folder: Path, out: Path, move: bool, summary: MergeSummary) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        rel_dir = base.relative_to(folder)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        for name in filenames:
            rel = rel_dir / name
            if not _is_shard_file(rel):
                _bring(base / name, out / rel, move, summary)
    segments = folder / STATE_DIR / JOURNAL_DIR
    if segments.is_dir():  # never moved: the shard folder keeps its journal
        for segment in sorted(segments.glob(f"*{SEGMENT_SUFFIX}")):
            _bring(segment, out / STATE_DIR / JOURNAL_DIR / segment.name, False, summary)


def _bring(src: Path, dst: Path, move: bool, summary: MergeSummary) -> None:
    """Hard-link (or copy, or move) `src` to `dst`, replacing what is there atomically.

    A symbolic link (a dataset's image) is made again, pointing where it pointed."""
    if src.is_symlink():
        with atomic_path(dst) as tmp:
            tmp.unlink()
            os.symlink(os.readlink(src), tmp)
        summary.linked += 1
        if move:
            src.unlink()
        return
    if dst.exists() and os.path.samefile(src, dst):
        return
    if move:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dst)
            summary.moved += 1
            return
        except OSError:
            pass  # another filesystem: copy below, then remove the source
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
            linked = True
        except OSError:
            shutil.copy2(src, tmp)
            linked = False
    if move:
        src.unlink()
        summary.moved += 1
    elif linked:
        summary.linked += 1
    else:
        summary.copied += 1
