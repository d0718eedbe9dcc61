"""`mrcnn segment`: instance segmentation of image files, folders, globs and lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrcnn_cli.commands._common import (
    BatchOpt,
    ClassesOpt,
    DebugOpt,
    DeviceOpt,
    HalfOpt,
    JsonOpt,
    MaskThrOpt,
    MaxDetOpt,
    ModelOpt,
    QuietOpt,
    RandomWeightsOpt,
    RoiOpOpt,
    ScoreThrOpt,
    WeightsOpt,
    WorkersOpt,
    finish_run,
    model_config,
    parse_save_kinds,
    run_or_exit,
)


def segment_command(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders (recursive), globs or .txt lists.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("results"),
    save: Annotated[
        str, typer.Option("--save", help="Comma-separated: overlay, masks, coco.")
    ] = "overlay,coco",
    mask_format: Annotated[
        str, typer.Option("--mask-format", help="instance (16-bit ids) | binary | semantic.")
    ] = "instance",
    ann: Annotated[
        Path | None, typer.Option("--ann", help="COCO annotations: take image ids from here.")
    ] = None,
    model: ModelOpt = "maskrcnn_resnet50_fpn",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    half: HalfOpt = False,
    batch_size: BatchOpt = None,
    score_thr: ScoreThrOpt = 0.5,
    max_det: MaxDetOpt = 100,
    classes: ClassesOpt = None,
    mask_thr: MaskThrOpt = 0.5,
    roi_op: RoiOpOpt = None,
    workers: WorkersOpt = 2,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo images already done (default: resume).")
    ] = False,
    random_weights: RandomWeightsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Segment images; write overlays, PNG masks and/or COCO results JSON under --out."""
    from mrcnn_cli.engine import SegmentConfig, segment

    def job():
        cfg = SegmentConfig(
            inputs=tuple(inputs),
            out=out,
            model=model_config(
                model,
                weights,
                device,
                half,
                score_thr,
                max_det,
                classes,
                mask_thr,
                roi_op,
                random_weights,
            ),
            batch_size=batch_size,
            save=parse_save_kinds(save, "overlay, masks, coco"),
            mask_format=mask_format,
            ann=ann,
            overwrite=overwrite,
            workers=workers,
        )
        return segment(cfg, enabled_progress=not quiet, quiet=quiet)

    summary = run_or_exit(job, debug)
    finish_run(summary, quiet=quiet, json_out=json_out)


def register(app: typer.Typer) -> None:
    app.command("segment")(segment_command)
