"""`mrcnn segment`: instance segmentation of image files, folders, globs and lists."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from mrcnn_cli.commands._common import (
    BatchOpt,
    DebugOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    TrackBufferOpt,
    TrackerOpt,
    TrackOpt,
    WorkersOpt,
    finish_run,
    model_options,
    output_folder,
    parse_save_kinds,
    progress_for,
    run_or_exit,
    track_settings,
)
from mrcnn_cli.config import LABELSTUDIO_PREFIX, ModelConfig
from mrcnn_cli.errors import MrcnnError


@model_options()
def segment_command(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (recursive), globs, .txt lists, or s3:// gs:// az:// "
            "http(s):// URLs (a prefix: every image under it)."
        ),
    ],
    model_config: ModelConfig,
    out: OutOpt = "results",
    save: Annotated[
        str,
        typer.Option(
            "--save",
            help="Comma-separated: overlay, masks, coco (predictions.json), coco-dataset "
            "(COCO instances dataset for CVAT/Datumaro/FiftyOne), yolo (Ultralytics YOLO-seg "
            "dataset), labelme (JSON per image), cvat (cvat.xml), labelstudio (Label Studio "
            "tasks + labeling config), csv (objects.csv), crops (RGBA cut-outs), report "
            "(report.html: counts, failures, classes, a gallery of thumbnails).",
        ),
    ] = "overlay,coco",
    mask_format: Annotated[
        str, typer.Option("--mask-format", help="instance (16-bit ids) | binary | semantic.")
    ] = "instance",
    ann: Annotated[
        Path | None, typer.Option("--ann", help="COCO annotations: take image ids from here.")
    ] = None,
    polygons: Annotated[
        bool,
        typer.Option(
            "--polygons",
            help="coco-dataset: masks as polygons instead of RLE.",
            rich_help_panel="Datasets",
        ),
    ] = False,
    copy_images: Annotated[
        bool,
        typer.Option(
            "--copy-images",
            help="yolo, coco-dataset: copy the images into the dataset (default: symbolic links).",
            rich_help_panel="Datasets",
        ),
    ] = False,
    val_split: Annotated[
        float,
        typer.Option(
            "--val-split",
            min=0.0,
            max=0.99,
            help="yolo: this fraction of the "
            "images is listed as val in data.yaml (default 0: val is the train "
            "set).",
            rich_help_panel="Datasets",
        ),
    ] = 0.0,
    image_prefix: Annotated[
        str,
        typer.Option(
            "--image-prefix",
            help="labelstudio: data.image is this prefix + the "
            "image's relative path (a URL, a bucket, Label Studio's local files).",
            rich_help_panel="Datasets",
        ),
    ] = LABELSTUDIO_PREFIX,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = 2,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo images already done (default: resume).")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N",
            help="Process only shard K of N (K in 0..N-1): inputs whose relative path hashes "
            "to K mod N. Run all N (e.g. a job array), then `mrcnn merge`.",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="local (threads, one process) | ray (a pool of Ray workers)."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Join this Ray cluster (default: start a local Ray)."),
    ] = None,
    num_workers: Annotated[
        int | None,
        typer.Option(
            "--num-workers",
            min=1,
            help="Ray workers, each with its own model (default: one per GPU; 1 without GPUs).",
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-worker",
            min=0.0,
            help="GPUs per Ray worker (default: 1 if the cluster has GPUs, else 0).",
        ),
    ] = None,
    cpus_per_worker: Annotated[
        float, typer.Option("--cpus-per-worker", min=0.01, help="CPUs per Ray worker.")
    ] = 1.0,
    track: TrackOpt = False,
    track_buffer: TrackBufferOpt = 30,
    tracker: TrackerOpt = "bytetrack",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Segment images; write overlays, PNG masks and/or COCO results JSON under --out."""
    from mrcnn_cli.config import ExportOptions, SegmentConfig

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
            track=track_settings(track, track_buffer, tracker),
            export=ExportOptions(polygons, copy_images, val_split, image_prefix),
        )
        ray_given = [ray_address, num_workers, gpus_per_worker, cpus_per_worker != 1.0]
        if engine == "local":
            if any(v not in (None, False) for v in ray_given):
                raise MrcnnError("--ray-address and --*-worker(s) options need --engine ray")
            from mrcnn_cli.engine import run_segment
            from mrcnn_cli.shards import ShardSpec

            spec = ShardSpec.parse(shard) if shard is not None else None
            return run_segment(cfg, progress_for(quiet), shard=spec)
        if engine != "ray":
            raise MrcnnError(f"--engine must be local or ray, not {engine!r}")
        if shard is not None:
            raise MrcnnError("--shard is for the local engine; --engine ray spreads the work")
        from mrcnn_cli.distributed.ray_engine import RayOptions, run_segment_ray

        options = RayOptions(ray_address, num_workers, gpus_per_worker, cpus_per_worker)
        # Ray prints cluster events (a node lost, a worker killed) to the driver's stdout
        # from a thread of its own; stdout carries --json, so they go to stderr instead.
        with contextlib.redirect_stdout(sys.stderr):
            return run_segment_ray(cfg, options, progress_for(quiet))

    summary = run_or_exit(job, debug)
    finish_run(summary, quiet=quiet, json_out=json_out)


def register(app: typer.Typer) -> None:
    app.command("segment")(segment_command)
