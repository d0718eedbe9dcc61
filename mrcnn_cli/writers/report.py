"""`report.html`: one self-contained page that shows what a run did (`--save report`).

The page is the template `report_template.html` (inline CSS and JS, no network) with the
run's data inlined as JSON in a `<script type="application/json">` element: a sidecar
file would be blocked by the browser's file:// rules. The data is compact arrays (one
entry per image, one flat list of detections), not per-image HTML, so 100,000 images
cost a few MB and the page draws only the gallery page in view. Everything a name or a
reason holds is put into the page with `textContent` by the script; the JSON text is
escaped so that no `</script>` inside it can end the element.

Built from the journal at the end of a run (and by `mrcnn merge`), like the other
run-level files, and written atomically; a failure to write it is returned as a
`FailedItem`, never raised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from mrcnn_cli.atomic import write_text
from mrcnn_cli.config import ModelConfig
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.journal import ImageRecord, Journal
from mrcnn_cli.names import display_name, os_error_reason
from mrcnn_cli.progress import RunSummary

REPORT_FILE = "report.html"
HIST_BINS = 20
PAGE_SIZE = 60
_TEMPLATE = "report_template.html"
_DATA_MARK = "/*REPORT_DATA*/null"
# JSON is valid inside <script> once these cannot form `</script>` or `<!--`, and the
# line separators (legal in JSON, not in old JS) cannot end a line.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                   "\u2028": "\\u2028", "\u2029": "\\u2029"}  # fmt: skip


@dataclass
class ReportRun:
    """What the page says about the run itself (the counts come from its summary)."""

    command: str
    out: Path
    inputs: Sequence[str] = ()
    model: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    save: Sequence[str] = ()
    finished: float = field(default_factory=time.time)  # epoch seconds

    def to_json(self, summary: RunSummary) -> dict[str, Any]:
        started = self.finished - summary.seconds
        return {
            "command": self.command,
            "out": display_name(self.out),
            "inputs": [display_name(i) for i in self.inputs],
            "model": display_name(self.model),
            "settings": {k: _plain(v) for k, v in self.settings.items()},
            "save": list(self.save),
            "started": _iso(started),
            "finished": _iso(self.finished),
            "seconds": round(summary.seconds, 3),
            "rate": round(summary.rate, 3),
            "unit": summary.unit,
            "total": summary.total,
            "processed": summary.processed,
            "skipped": summary.skipped,
            "failed": len(summary.failed),
            "detections": summary.detections,
        }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _plain(value: Any) -> Any:
    """Settings as JSON values (tuples and paths become lists and strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return display_name(str(value))


def url_stem(rel: PurePosixPath | str) -> str:
    """The percent-encoded URL of `rel` without its suffix, from the file name's bytes.

    The page derives this itself for ordinary names; only names whose display form
    differs from the name (not UTF-8, control characters) need it spelled out.
    """
    stem = PurePosixPath(rel).with_suffix("")
    return quote(bytes(stem.as_posix(), "utf-8", "surrogateescape"), safe="/")


class ImageTable:
    """The gallery's data, gathered one record at a time in input order.

    Classes are numbered in order of first appearance; each image's detections are kept
    best score first as (class, score in thousandths) in two flat lists.
    """

    def __init__(self, class_names: Sequence[str], category_ids: Sequence[int]) -> None:
        self._name_of = {int(c): str(n) for c, n in zip(category_ids, class_names, strict=False)}
        self.classes: list[str] = []
        self._index: dict[int, int] = {}
        self.names: list[str] = []
        self.sizes: list[int] = []  # width, height per image, flattened
        self.counts: list[int] = []
        self.det_class: list[int] = []
        self.det_score: list[int] = []
        self.urls: dict[int, str] = {}  # image index -> URL stem, where the page cannot derive it
        self.class_counts: list[int] = []
        self.histogram = [0] * HIST_BINS

    def _class(self, category_id: int) -> int:
        k = self._index.get(category_id)
        if k is None:
            k = self._index[category_id] = len(self.classes)
            self.classes.append(display_name(self._name_of.get(category_id, str(category_id))))
            self.class_counts.append(0)
        return k

    def add(self, record: ImageRecord) -> None:
        shown = display_name(record.rel)
        if shown != record.rel:
            self.urls[len(self.names)] = url_stem(record.rel)
        self.names.append(shown)
        self.sizes += [record.width, record.height]
        dets = sorted(
            ((_score(r.get("score")), int(r.get("category_id", 0))) for r in record.results),
            key=lambda d: -d[0],
        )
        self.counts.append(len(dets))
        for score, category_id in dets:
            k = self._class(category_id)
            self.class_counts[k] += 1
            self.det_class.append(k)
            self.det_score.append(max(0, min(1000, round(score * 1000))))
            self.histogram[min(HIST_BINS - 1, max(0, int(score * HIST_BINS)))] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "class_counts": self.class_counts,
            "histogram": self.histogram,
            "names": self.names,
            "sizes": self.sizes,
            "counts": self.counts,
            "det_class": self.det_class,
            "det_score": self.det_score,
            "urls": {str(k): v for k, v in self.urls.items()},
        }


def _score(value: Any) -> float:
    """A detection's score in [0, 1]; anything else (NaN, missing) counts as 0."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(1.0, score) if score >= 0.0 else 0.0  # NaN fails the comparison


def image_table(
    records: Iterable[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int]
) -> ImageTable:
    table = ImageTable(class_names, category_ids)
    for record in records:
        table.add(record)
    return table


def report_document(
    run: ReportRun,
    summary: RunSummary,
    table: ImageTable,
    videos: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Everything the page shows, as plain JSON values."""
    save = set(run.save)
    return {
        "format": 1,
        "run": run.to_json(summary),
        "failures": [[f.display_path, f.display_reason] for f in summary.failed],
        "images": table.to_json(),
        "videos": [dict(v) for v in videos],
        "links": {"overlays": "overlay" in save, "thumbs": "report" in save},
        "page_size": PAGE_SIZE,
    }


def data_json(document: Mapping[str, Any]) -> str:
    """The document as JSON that is safe inside a `<script>` element of an HTML page."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def template() -> str:
    return resources.files(__package__).joinpath(_TEMPLATE).read_text(encoding="utf-8")


def render_report(document: Mapping[str, Any]) -> str:
    """The whole page: the template with the data inlined."""
    page = template()
    assert _DATA_MARK in page, "report template lost its data mark"
    return page.replace(_DATA_MARK, data_json(document), 1)


def write_report(path: Path, document: Mapping[str, Any]) -> list[FailedItem]:
    """Write the page atomically; a file system problem (or data JSON cannot hold, such
    as NaN) comes back as a failure."""
    try:
        page = render_report(document)
    except (ValueError, TypeError) as exc:
        return [FailedItem(path, f"cannot build the report: {display_name(str(exc))}")]
    try:
        write_text(path, page)
    except OSError as exc:
        return [FailedItem(path, f"cannot write: {os_error_reason(exc)}")]
    return []


def write_run_report(
    path: Path,
    run: ReportRun,
    summary: RunSummary,
    journal: Journal,
    rels: Sequence[PurePosixPath | str],
    digest: str | None,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    videos: Sequence[Mapping[str, Any]] = (),
) -> list[FailedItem]:
    """The report of an image run, from the journal's records in input order."""
    try:
        table = image_table(journal.records(rels, digest), class_names, category_ids)
    except OSError as exc:
        return [FailedItem(path, f"cannot write: {os_error_reason(exc)}")]
    except (ValueError, TypeError) as exc:  # a record we cannot show: the run still ends
        return [FailedItem(path, f"cannot build the report: {display_name(str(exc))}")]
    return write_report(path, report_document(run, summary, table, videos))


def video_row(
    rel: PurePosixPath | str,
    href: str | None,
    status: str,
    frames: int | None = None,
    detections: int | None = None,
    tracks: dict[str, int] | None = None,
    tracks_href: str | None = None,
) -> dict[str, Any]:
    """One line of the report's video table; `href`: the annotated video, if written;
    `tracks`: tracks per class with --track, `tracks_href` its tracks.csv."""
    return {"name": display_name(rel), "href": href, "status": status, "frames": frames,
            "detections": detections, "tracks": tracks, "tracks_href": tracks_href}  # fmt: skip


def report_settings(model: ModelConfig, batch_size: int | None) -> dict[str, Any]:
    """The settings a reader of the report wants to see (not every field of the config)."""
    settings: dict[str, Any] = {
        "score_thr": model.score_thr,
        "max_det": model.max_det,
        "mask_thr": model.mask_thr,
        "classes": ", ".join(model.classes) if model.classes else "all",
        "precision": model.precision,
        "device": model.device,
        "batch_size": "auto" if batch_size is None else batch_size,
    }
    if model.weights:
        settings["weights"] = model.weights
    if model.tile is not None:
        settings["tile"] = f"{model.tile} px, overlap {model.tile_overlap}"
    return settings
