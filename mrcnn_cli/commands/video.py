"""`mrcnn video`: instance segmentation of every frame of video files, folders and globs."""

from __future__ import annotations

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
    finish_run,
    model_options,
    output_folder,
    parse_save_kinds,
    progress_for,
    run_or_exit,
    track_settings,
)
from mrcnn_cli.config import DEFAULT_CRF, ModelConfig

SAVE_HELP = (
    "Comma-separated: video (annotated <stem>.mp4), masks (masks/<stem>/<frame>.png, "
    "16-bit instance ids), coco (<stem>.predictions.json + <stem>.images.json, one image "
    "per frame), mot (<stem>.mot.txt, MOTChallenge: frame,id,x,y,w,h,score,-1,-1,-1; needs "
    "--track), report (report.html: the run, its failures and a table of the videos)."
)


@model_options()
def video_command(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Video files (mp4, avi, mov, mkv, webm), folders or globs. A folder that "
            "holds images and no video is one clip of its images, in name order."
        ),
    ],
    model_config: ModelConfig,
    out: OutOpt = "results",
    save: Annotated[str, typer.Option("--save", help=SAVE_HELP)] = "video",
    stride: Annotated[
        int,
        typer.Option(
            "--stride",
            min=1,
            help="Run the model on every Nth frame; frames between reuse its result "
            "(the output keeps every frame).",
        ),
    ] = 1,
    start: Annotated[
        float, typer.Option("--start", min=0.0, help="Start at this second of the video.")
    ] = 0.0,
    end: Annotated[
        float | None, typer.Option("--end", min=0.0, help="Stop before this second.")
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option("--max-frames", min=1, help="At most this many frames a video.")
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            "--fps",
            min=0.001,
            max=1000.0,
            help="Frame rate of folders of frames (default 30); videos keep their own.",
        ),
    ] = None,
    batch_size: BatchOpt = None,
    codec: Annotated[
        str | None,
        typer.Option(
            "--codec",
            help="FFmpeg video encoder (default: libx264 (H.264), or mpeg4 where FFmpeg "
            "has no libx264).",
        ),
    ] = None,
    crf: Annotated[
        int, typer.Option("--crf", min=0, max=51, help="libx264 quality: lower is better.")
    ] = DEFAULT_CRF,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo videos already done (default: resume).")
    ] = False,
    track: TrackOpt = False,
    track_buffer: TrackBufferOpt = 30,
    tracker: TrackerOpt = "bytetrack",
    trail: Annotated[
        int,
        typer.Option(
            "--trail",
            min=0,
            help="With --track, draw each track's last N centres.",
            rich_help_panel="Tracking",
        ),
    ] = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Segment every frame of videos; write annotated MP4s (audio kept), masks, COCO JSON."""
    from mrcnn_cli.config import VideoConfig
    from mrcnn_cli.video import run_videos

    def job():
        cfg = VideoConfig(
            inputs=tuple(inputs),
            out=output_folder(out),
            model=model_config,
            batch_size=batch_size,
            stride=stride,
            start=start,
            end=end,
            max_frames=max_frames,
            save=parse_save_kinds(save),
            overwrite=overwrite,
            codec=codec,
            crf=crf,
            track=track_settings(track, track_buffer, tracker),
            trail=trail,
            fps=fps,
        )
        return run_videos(cfg, progress_for(quiet))

    summary = run_or_exit(job, debug)
    finish_run(summary, quiet=quiet, json_out=json_out)


def register(app: typer.Typer) -> None:
    app.command("video")(video_command)
