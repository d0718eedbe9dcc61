"""eval's `report.html`: the COCO tables, per-class AP, PR plots and worst images on one page.

The same self-contained page as `--save report` (writers/report.py), fed metrics.json's
document instead of a gallery: eval already wrote the plots and the worst-image
pictures, so the page only links them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mrcnn_cli.config import EvalConfig
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.progress import RunSummary
from mrcnn_cli.writers.report import (
    REPORT_FILE,
    ImageTable,
    ReportRun,
    report_document,
    report_settings,
    write_report,
)

_EVAL_KEYS = ("annotations", "predictions_file", "mode", "metrics", "skipped", "notes", "files")


def eval_report_document(
    cfg: EvalConfig, metrics: Mapping[str, Any], failed: Sequence[FailedItem], seconds: float
) -> dict[str, Any]:
    """The page's data: the run as the other reports show it, plus metrics.json's numbers."""
    source = cfg.images if cfg.images is not None else cfg.pred
    settings: dict[str, Any] = {"iou_types": ", ".join(cfg.iou_types)}
    if cfg.model is not None:
        settings.update(report_settings(cfg.model, cfg.batch_size))
    run = ReportRun("eval", cfg.out, [str(source), str(cfg.ann)],
                    cfg.model.model if cfg.model is not None else "(predictions file)",
                    settings)  # fmt: skip
    images = metrics["images"]
    summary = RunSummary(
        total=images["evaluated"] + len(failed),
        processed=images["evaluated"],
        skipped=0,
        failed=list(failed),
        detections=metrics["detections"]["kept"],
        seconds=seconds,
    )
    document = report_document(run, summary, ImageTable((), ()))
    document["eval"] = {key: metrics[key] for key in _EVAL_KEYS}
    return document


def write_eval_report(
    cfg: EvalConfig, metrics: Mapping[str, Any], failed: Sequence[FailedItem], seconds: float
) -> list[FailedItem]:
    """Write `<out>/report.html`; a file system problem comes back as a failure."""
    path: Path = cfg.out / REPORT_FILE
    return write_report(path, eval_report_document(cfg, metrics, failed, seconds))
