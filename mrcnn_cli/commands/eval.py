"""`mrcnn eval`: COCO bbox / segm AP of a model, or of an existing results file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mrcnn_cli.commands._common import (
    BatchOpt,
    DebugOpt,
    JsonOpt,
    QuietOpt,
    WorkersOpt,
    err_console,
    model_options,
    output_folder,
    parse_classes,
    progress_for,
    run_or_exit,
)
from mrcnn_cli.config import EVAL_SCORE_THR, ModelConfig
from mrcnn_cli.errors import MrcnnError

IOU_TYPE_CHOICES = {"bbox": ("bbox",), "segm": ("segm",), "both": ("bbox", "segm")}
_SHOWN_MISSING = 20


@model_options(
    score_thr=EVAL_SCORE_THR,
    score_help="Model mode: minimum score (0.05 is the COCO evaluation setting).",
    with_classes=False,  # --classes restricts COCOeval (COCO's protocol), not the model
)
def eval_command(
    ann: Annotated[
        Path, typer.Option("--ann", "-a", help="COCO instances JSON (the ground truth).")
    ],
    model_config: ModelConfig,
    model_given: bool,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            "-i",
            help="Folder with the annotated images: the model runs on them, the "
            "worst-images gallery is drawn from them; with --pred, images missing here are "
            "listed and left out (exit 1).",
        ),
    ] = None,
    pred: Annotated[
        Path | None,
        typer.Option("--pred", "-p", help="Score this COCO results file instead of a model."),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for metrics.json, plots and gallery.")
    ] = "eval",
    iou_type: Annotated[str, typer.Option("--iou-type", help="bbox | segm | both.")] = "both",
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Score only these classes: comma-separated names or ids."),
    ] = None,
    max_images: Annotated[
        int | None,
        typer.Option("--max-images", min=1, help="Only the first N annotated images."),
    ] = None,
    gallery: Annotated[
        int, typer.Option("--gallery", min=0, help="How many worst images to draw (0: none).")
    ] = 8,
    gallery_thr: Annotated[
        float,
        typer.Option(
            "--gallery-thr",
            min=0.0,
            max=1.0,
            help="Score from which a detection is drawn (and counted) in the gallery.",
        ),
    ] = 0.5,
    plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="Write precision-recall curve PNGs.")
    ] = True,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = 2,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Model mode: redo images already in --out.")
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate instance segmentation with COCO AP (pycocotools COCOeval).

    Model mode: `mrcnn eval --images DIR --ann instances.json [--model ...]`.
    Results mode: `mrcnn eval --pred predictions.json --ann instances.json`.
    """
    from mrcnn_cli.config import EvalConfig
    from mrcnn_cli.evaluation.run import run_eval

    def job():
        if iou_type not in IOU_TYPE_CHOICES:
            raise MrcnnError(f"--iou-type must be bbox, segm or both, not {iou_type!r}")
        if pred is not None and model_given:
            raise MrcnnError("--pred scores an existing results file; --model does not apply")
        if pred is None and images is None:
            raise MrcnnError(
                "nothing to evaluate: give --pred FILE, or --images DIR to run a model"
            )
        cfg = EvalConfig(
            ann=ann,
            out=output_folder(out),
            pred=pred,
            images=images,
            iou_types=IOU_TYPE_CHOICES[iou_type],
            classes=tuple(parse_classes(classes) or ()) or None,
            max_images=max_images,
            gallery=gallery,
            gallery_score_thr=gallery_thr,
            plots=plots,
            model=model_config if pred is None else None,
            batch_size=batch_size,
            workers=workers,
            overwrite=overwrite,
        )
        return run_eval(cfg, progress_for(quiet or json_out))

    outcome = run_or_exit(job, debug)
    if json_out:
        typer.echo(json.dumps(outcome.document, indent=2))
    elif not quiet:
        _print_report(outcome)
    _print_problems(outcome, quiet)
    raise typer.Exit(outcome.exit_code)


def _print_report(outcome) -> None:
    from rich.console import Console

    from mrcnn_cli.commands._eval_tables import per_class_table, summary_table

    console = Console(width=None if sys.stdout.isatty() else 160)
    if outcome.results:
        console.print(summary_table(outcome.results))
        console.print(per_class_table(outcome.results))


def _print_problems(outcome, quiet: bool) -> None:
    """Skipped types, dropped detections and missing images on stderr (stdout: the data);
    under --quiet only what failed (missing images, files that could not be written)."""
    for item in outcome.unwritten + (outcome.missing if quiet else []):
        line = f"[red]failed[/] {escape(item.display_path)}: {escape(item.display_reason)}"
        err_console.print(line, highlight=False, soft_wrap=True)
    if quiet:
        return
    for iou_type, reason in outcome.skipped.items():
        err_console.print(
            f"[yellow]{iou_type} skipped:[/] {escape(reason)}", highlight=False, soft_wrap=True
        )
    for note in outcome.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if outcome.missing:
        n = len(outcome.missing)
        err_console.print(
            f"[bold yellow]{n} image file(s) missing or unreadable; evaluated the other "
            f"{outcome.document['images']['evaluated']}:[/]",
            highlight=False,
            soft_wrap=True,
        )
        for item in outcome.missing[:_SHOWN_MISSING]:
            err_console.print(
                f"  {escape(item.display_path)}: {escape(item.display_reason)}",
                highlight=False,
                soft_wrap=True,
            )
        if n > _SHOWN_MISSING:
            err_console.print(f"  ... and {n - _SHOWN_MISSING} more (all in metrics.json)")
    if outcome.unwritten:
        return
    from mrcnn_cli.writers.report import REPORT_FILE

    report = outcome.metrics_path.parent / REPORT_FILE
    err_console.print(f"wrote {escape(str(outcome.metrics_path))}, {escape(str(report))}"
                      + (f" and {len(outcome.files)} image(s)" if outcome.files else ""),
                      highlight=False, soft_wrap=True)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
