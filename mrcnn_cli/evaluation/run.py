"""One `mrcnn eval` run: pick images and classes, get detections, score, write the report.

Detections come either from an existing COCO results file (`--pred`) or from running a
model over the annotated images through the same engine as `mrcnn segment`, with COCO's
evaluation settings (score >= 0.05, 100 detections per image). Either way they then go
through the same checks and the same COCOeval, so the two modes agree exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from mrcnn_cli.atomic import write_json
from mrcnn_cli.config import IOU_TYPES, EvalConfig, SegmentConfig
from mrcnn_cli.errors import EXIT_OK, EXIT_SOME_FAILED, FailedItem, MrcnnError
from mrcnn_cli.evaluation.coco_io import (
    CheckedResults,
    GroundTruth,
    check_results,
    load_ground_truth,
    read_results_file,
    resolve_classes,
)
from mrcnn_cli.evaluation.metrics import TypeResult, evaluate_type, image_scores, worst_images
from mrcnn_cli.evaluation.report import plot_pr_curves, primary_type, type_to_dict
from mrcnn_cli.evaluation.report_page import write_eval_report
from mrcnn_cli.names import os_error_reason
from mrcnn_cli.progress import ProgressListener
from mrcnn_cli.writers.run_files import PREDICTIONS_FILE

if TYPE_CHECKING:
    from mrcnn_cli.segmenter import Segmenter

METRICS_FILE = "metrics.json"


@dataclass
class EvalOutcome:
    """What the command prints; `document` is exactly what metrics.json holds."""

    gt: GroundTruth
    results: dict[str, TypeResult]
    skipped: dict[str, str]
    notes: list[str]
    missing: list[FailedItem]
    document: dict[str, Any]
    metrics_path: Path
    files: list[Path] = field(default_factory=list)
    unwritten: list[FailedItem] = field(default_factory=list)  # a full disk, say

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.missing or self.unwritten else EXIT_OK


# ----------------------------------------------------------------------------- images
def locate_images(
    gt: GroundTruth, folder: Path, image_ids: list[int]
) -> tuple[dict[int, Path], list[FailedItem]]:
    """Each image's file under `folder`: its `file_name` as a relative path, else its
    base name (annotation files often carry `val2017/x.jpg` while the folder is flat)."""
    if not folder.is_dir():
        raise MrcnnError(f"--images {folder}: no such folder")
    found: dict[int, Path] = {}
    missing: list[FailedItem] = []
    for image_id in image_ids:
        name = str(gt.image(image_id).get("file_name") or "")
        if not name:
            missing.append(FailedItem(f"image id {image_id}", "no 'file_name' in the annotations"))
            continue
        rel = PurePosixPath(name.replace("\\", "/"))
        for candidate in (folder / rel, folder / rel.name):
            if candidate.is_file():
                found[image_id] = candidate
                break
        else:
            missing.append(FailedItem(folder / rel, "image file not found"))
    return found, missing


def _drop_segm(
    types: list[str], problem: str | None, cfg: EvalConfig, skipped: dict[str, str]
) -> list[str]:
    """segm cannot be scored: an error if it was all that was asked for, else a note."""
    if "segm" not in types or problem is None:
        return types
    if list(cfg.iou_types) == ["segm"]:
        raise MrcnnError(f"cannot evaluate segm: {problem}")
    skipped["segm"] = problem
    return [t for t in types if t != "segm"]


# ----------------------------------------------------------------------------- model mode
def predict_with_model(
    cfg: EvalConfig,
    paths: dict[int, Path],
    image_ids: list[int],
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
) -> tuple[list[dict[str, Any]], list[FailedItem], Path]:
    """`mrcnn segment --save coco --ann ...` over the images, into --out (resumable).

    Class filtering is left to COCOeval (not the model), as in COCO's own protocol:
    the 100-detection budget per image is shared by all classes either way.
    """
    from mrcnn_cli.engine import run_segment  # torch only in model mode

    assert cfg.model is not None
    seg = SegmentConfig(
        inputs=tuple(str(paths[i]) for i in image_ids),
        out=cfg.out,
        model=cfg.model,
        batch_size=cfg.batch_size,
        save=("coco",),
        ann=cfg.ann,
        overwrite=cfg.overwrite,
        workers=cfg.workers,
    )
    summary = run_segment(seg, progress, segmenter)
    pred_path = cfg.out / PREDICTIONS_FILE
    return read_results_file(pred_path), list(summary.failed), pred_path


# ----------------------------------------------------------------------------- the run
def run_eval(
    cfg: EvalConfig,
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
) -> EvalOutcome:
    """Score detections against `cfg.ann` and write metrics.json, plots and gallery.

    In model mode the images go through `run_segment` (resumable, into `cfg.out`);
    `segmenter` reuses a loaded model.
    """
    started = time.perf_counter()
    cfg.validate()
    gt = load_ground_truth(cfg.ann)
    cat_ids = resolve_classes(gt, cfg.classes) if cfg.classes else gt.category_ids
    skipped: dict[str, str] = {}
    types = _drop_segm(list(cfg.iou_types), gt.segm_problem, cfg, skipped)

    image_ids = list(gt.image_ids)
    paths: dict[int, Path] = {}
    missing: list[FailedItem] = []
    if cfg.images is not None:
        paths, missing = locate_images(gt, cfg.images, image_ids)
        image_ids = [i for i in image_ids if i in paths]
    if cfg.max_images is not None:
        image_ids = image_ids[: cfg.max_images]
    if not image_ids:
        where = f" under {cfg.images}" if cfg.images is not None else ""
        raise MrcnnError(f"no image of {cfg.ann.name} to evaluate{where}")

    if cfg.model is not None:
        raw, failed, pred_path = predict_with_model(cfg, paths, image_ids, progress, segmenter)
        failed_paths = {str(f.path) for f in failed}
        missing += failed
        image_ids = [i for i in image_ids if str(paths[i]) not in failed_paths]
        if not image_ids:
            raise MrcnnError("the model could not process any image; nothing to evaluate")
    else:
        assert cfg.pred is not None
        raw, pred_path = read_results_file(cfg.pred), cfg.pred

    checked = check_results(gt, raw)
    notes = checked.notes()
    if not checked.results:
        notes.append("there are no predictions: every AP below is 0 where there is ground truth")
    types = _drop_segm(types, checked.segm_problem, cfg, skipped)
    results = {t: evaluate_type(gt, checked.results, t, image_ids, cat_ids) for t in IOU_TYPES
               if t in types}  # fmt: skip

    files: list[Path] = []
    unwritten: list[FailedItem] = []
    if cfg.plots:
        for result in results.values():
            try:
                files += plot_pr_curves(result, cfg.out, cfg.top_classes)
            except OSError as exc:
                where = cfg.out / f"pr_{result.iou_type}.png"
                unwritten.append(FailedItem(where, f"cannot write: {os_error_reason(exc)}"))
    gallery: list[Path] = []
    if cfg.gallery > 0:
        if cfg.images is None:
            notes.append("gallery of worst images skipped: give --images DIR to draw it")
        else:
            gallery, problems = _gallery(cfg, gt, checked, results, paths, cat_ids)
            notes += [f"gallery: {p.display_path}: {p.display_reason}" for p in problems]
    files += gallery

    document = _document(
        cfg, gt, checked, results, skipped, notes, missing, image_ids, cat_ids, pred_path,
        files, time.perf_counter() - started,
    )  # fmt: skip
    metrics_path = cfg.out / METRICS_FILE
    try:
        write_json(metrics_path, document, indent=2)
    except OSError as exc:
        unwritten.append(FailedItem(metrics_path, f"cannot write: {os_error_reason(exc)}"))
    seconds = time.perf_counter() - started
    unwritten += write_eval_report(cfg, document, [*missing, *unwritten], seconds)
    return EvalOutcome(
        gt, results, skipped, notes, missing, document, metrics_path, files, unwritten
    )


def _gallery(
    cfg: EvalConfig,
    gt: GroundTruth,
    checked: CheckedResults,
    results: dict[str, TypeResult],
    paths: dict[int, Path],
    cat_ids: list[int],
) -> tuple[list[Path], list[FailedItem]]:
    from mrcnn_cli.evaluation.gallery import write_gallery

    key = primary_type(results)
    ev = results[key].metrics.cocoeval
    assert ev is not None
    worst = worst_images(image_scores(ev, 0.5, cfg.gallery_score_thr), cfg.gallery)
    return write_gallery(
        gt, checked.results, worst, paths, cfg.out, cat_ids, cfg.gallery_score_thr,
        f"{key}, IoU 0.50", with_masks=key == "segm",
    )  # fmt: skip


def _document(
    cfg: EvalConfig,
    gt: GroundTruth,
    checked: CheckedResults,
    results: dict[str, TypeResult],
    skipped: dict[str, str],
    notes: list[str],
    missing: list[FailedItem],
    image_ids: list[int],
    cat_ids: list[int],
    pred_path: Path,
    files: list[Path],
    seconds: float,
) -> dict[str, Any]:
    """metrics.json: every number, and enough context to know what was scored."""
    return {
        "annotations": str(cfg.ann),
        "predictions_file": str(pred_path),
        "mode": "model" if cfg.model is not None else "predictions",
        "model": asdict(cfg.model) if cfg.model is not None else None,
        "iou_types": list(results),
        "skipped": skipped,
        "categories": [int(c) for c in cat_ids],
        "images": {
            "annotated": len(gt.image_ids),
            "evaluated": len(image_ids),
            "missing": [{"path": m.display_path, "reason": m.display_reason} for m in missing],
        },
        "detections": {
            "total": checked.total,
            "kept": len(checked.results),
            "dropped_unknown_images": checked.dropped_unknown_images,
            "unknown_image_ids": checked.unknown_image_ids,
            "dropped_unknown_categories": checked.dropped_unknown_categories,
            "unknown_category_ids": checked.unknown_category_ids,
        },
        "metrics": {t: type_to_dict(r) for t, r in results.items()},
        "notes": notes,
        "files": [_relative(f, cfg.out) for f in files],
        "seconds": round(seconds, 3),
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
