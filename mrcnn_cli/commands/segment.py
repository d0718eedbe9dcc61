"""`mrcnn segment`: instance segmentation of image files, folders, globs and lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrcnn_cli.commands._common import (
    BatchOpt,
    DebugOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    WorkersOpt,
    finish_run,
    model_options,
    output_folder,
    parse_save_kinds,
    progress_for,
    run_or_exit,
)
from mrcnn_cli.config import ModelConfig


@model_options()
def segment_command(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders (recursive), globs or .txt lists.")
    ],
    model_config: ModelConfig,
    out: OutOpt = "results",
    save: Annotated[
        str,
        typer.Option(
            "--save",
            help="Comma-separated: overlay, masks, coco (predictions.json), yolo (YOLO-seg "
            "labels), labelme (JSON per image), cvat (cvat.xml), csv (objects.csv), crops "
            "(RGBA cut-outs).",
        ),
    ] = "overlay,coco",
    mask_format: Annotated[
        str, typer.Option("--mask-format", help="instance (16-bit ids) | binary | semantic.")
    ] = "instance",
    ann: Annotated[
        Path | None, typer.Option("--ann", help="COCO annotations: take image ids from here.")
    ] = None,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = 2,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo images already done (default: resume).")
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Segment images; write overlays, PNG masks and/or COCO results JSON under --out."""
    from mrcnn_cli.config import SegmentConfig
    from mrcnn_cli.engine import run_segment

    def job():
        cfg = SegmentConfig(
            inputs=tuple(inputs),
            out=output_folder(out),
            model=model_config,
            batch_size=batch_size,
            save=parse_save_kinds(save),
            mask_format=mask_format,
            ann=ann,
            overwrite=overwrite,
            workers=workers,
        )
        return run_segment(cfg, progress_for(quiet))

    summary = run_or_exit(job, debug)
    finish_run(summary, quiet=quiet, json_out=json_out)


def register(app: typer.Typer) -> None:
    app.command("segment")(segment_command)
