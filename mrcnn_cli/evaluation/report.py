"""What `mrcnn eval` writes: JSON-ready numbers and PR-curve PNGs (tables: commands/).

Numbers stay fractions in [0, 1] everywhere (tables, JSON), as COCOeval prints them, so
a value read off the table can be compared with any other COCO tool without rescaling.
A number COCOeval cannot compute (its -1, e.g. APs with no small objects) is shown as
"-" and written as null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.evaluation.metrics import ClassAP, TypeResult, pr_curve


def clean_number(value: float | None) -> float | None:
    """NaN / None -> None, so json.dumps writes null instead of the invalid NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def fmt(value: float | None) -> str:
    value = clean_number(value)
    return "-" if value is None else f"{value:.3f}"


def type_to_dict(result: TypeResult) -> dict[str, Any]:
    """Every number of one IoU type: the 12 stats and the full per-class list."""
    return {
        "stats": {name: clean_number(v) for name, v in result.metrics.as_dict().items()},
        "per_class": [
            {
                "category_id": row.category_id,
                "name": row.name,
                "AP": clean_number(row.ap),
                "AP50": clean_number(row.ap50),
                "AP75": clean_number(row.ap75),
                "gt_instances": row.gt_instances,
                "detections": row.detections,
            }
            for row in result.per_class
        ],
    }


def primary_type(results: Mapping[str, TypeResult]) -> str:
    """The type the per-class table sorts by: segm when scored (the point of Mask R-CNN)."""
    return "segm" if "segm" in results else next(iter(results))


def class_rows(results: Mapping[str, TypeResult]) -> list[ClassAP]:
    """The primary type's per-class rows that have ground truth, in its (best first) order."""
    return [r for r in results[primary_type(results)].per_class if r.gt_instances > 0]


# ----------------------------------------------------------------------------- PR curves
def _new_axes(title: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # lazy: matplotlib costs ~0.5 s to import

    fig = Figure(figsize=(6.4, 5.0), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_pr_curves(result: TypeResult, out_dir: Path, top_classes: int = 6) -> list[Path]:
    """pr_<type>.png (all classes at IoU 0.50, 0.75 and 0.50:0.95) and
    pr_<type>_classes.png (IoU 0.50, the classes with the most ground truth)."""
    ev = result.metrics.cocoeval
    if ev is None:
        return []
    import numpy as np

    recall = np.asarray(ev.params.recThrs, dtype=float)
    iou_type = result.iou_type
    written = []

    fig, ax = _new_axes(f"{iou_type}: precision-recall, all classes")
    stats = result.metrics.as_dict()
    for iou, label, stat in ((0.5, "IoU 0.50", "AP50"), (0.75, "IoU 0.75", "AP75"),
                             (None, "IoU 0.50:0.95", "AP")):  # fmt: skip
        curve = pr_curve(ev, iou)
        if curve is not None:
            ax.plot(recall, curve, label=f"{label}  ({stat} {fmt(stats[stat])})")
    if ax.lines:
        ax.legend(loc="lower left")
    written.append(_save(fig, out_dir / f"pr_{iou_type}.png"))

    frequent = sorted(
        (r for r in result.per_class if r.gt_instances > 0),
        key=lambda r: (-r.gt_instances, r.name),
    )[:top_classes]
    fig, ax = _new_axes(f"{iou_type}: precision-recall at IoU 0.50, most frequent classes")
    for row in frequent:
        curve = pr_curve(ev, 0.5, row.category_id)
        if curve is not None:
            label = f"{row.name} (n={row.gt_instances}, AP50 {fmt(row.ap50)})"
            ax.plot(recall, curve, label=label)
    if ax.lines:
        ax.legend(loc="lower left", fontsize="small")
    written.append(_save(fig, out_dir / f"pr_{iou_type}_classes.png"))
    return written
