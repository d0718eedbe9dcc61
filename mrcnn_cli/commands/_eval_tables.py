"""`mrcnn eval`'s rich tables: the 12 COCO numbers and the per-class AP table."""

from __future__ import annotations

from collections.abc import Mapping

from rich.table import Table

from mrcnn_cli.evaluation.metrics import STAT_LABELS, STAT_NAMES, TypeResult
from mrcnn_cli.evaluation.report import class_rows, fmt, primary_type


def summary_table(results: Mapping[str, TypeResult]) -> Table:
    """The 12 COCO numbers, one column per IoU type."""
    table = Table(title="COCO metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("IoU / area / maxDets", style="dim")
    for iou_type in results:
        table.add_column(iou_type, justify="right")
    for i, (name, label) in enumerate(zip(STAT_NAMES, STAT_LABELS)):
        values = [fmt(r.metrics.stats[i]) for r in results.values()]
        table.add_row(name, label, *values, end_section=i in (5,))
    return table


def per_class_table(results: Mapping[str, TypeResult]) -> Table:
    """AP, AP50, AP75 per class and type, with the ground-truth count; best first."""
    key = primary_type(results)
    by_type = {t: {row.category_id: row for row in r.per_class} for t, r in results.items()}
    table = Table(title=f"Per-class AP (sorted by {key} AP)", title_justify="left")
    table.add_column("class")
    table.add_column("id", justify="right", style="dim")
    table.add_column("GT", justify="right")
    table.add_column("dets", justify="right", style="dim")
    for iou_type in results:
        for name in ("AP", "AP50", "AP75"):
            table.add_column(f"{iou_type} {name}", justify="right")
    for row in class_rows(results):
        cells = []
        for iou_type in results:
            other = by_type[iou_type][row.category_id]
            cells += [fmt(other.ap), fmt(other.ap50), fmt(other.ap75)]
        table.add_row(row.name, str(row.category_id), str(row.gt_instances), str(row.detections),
                      *cells)  # fmt: skip
    return table
