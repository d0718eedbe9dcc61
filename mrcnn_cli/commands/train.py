"""`mrcnn train` and `mrcnn synth`: train Mask R-CNN on COCO, YOLO-seg, LabelMe or CVAT data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mrcnn_cli.commands._common import DebugOpt, QuietOpt, RoiOpOpt, err_console, run_or_exit
from mrcnn_cli.errors import MrcnnError

# Spelled out rather than imported: `mrcnn --help` should not wait for torch.
ARCH_HELP = (
    "maskrcnn_resnet18_fpn_lite (CPU-friendly), maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2."
)


def train_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Training data as the labelling tools export it (format detected): a COCO "
            "instances .json, a YOLO-seg data.yaml, a CVAT for images .xml, or a folder of "
            "LabelMe .json.",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Folder of training images (for --ann; with --data: "
            "the images of a COCO or CVAT file).",
        ),
    ] = None,
    ann: Annotated[
        Path | None, typer.Option("--ann", help="COCO instances JSON for --images.")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="With --data: the class list, in order, comma-separated "
            "(default: the data's own; every label must be in it).",
        ),
    ] = None,
    val_data: Annotated[
        Path | None,
        typer.Option(
            "--val-data", help="Validation data in any --data format (YOLO: its val split)."
        ),
    ] = None,
    val_images: Annotated[Path | None, typer.Option("--val-images")] = None,
    val_ann: Annotated[Path | None, typer.Option("--val-ann")] = None,
    arch: Annotated[str, typer.Option("--arch", help=ARCH_HELP)] = ("maskrcnn_resnet18_fpn_lite"),
    init: Annotated[
        str, typer.Option("--init", help="scratch | coco (torchvision weights) | checkpoint path.")
    ] = "scratch",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps in all.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 4,
    lr: Annotated[float, typer.Option("--lr", help="Peak SGD learning rate.")] = 0.02,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Warm-up steps.")] = 200,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1)] = 500,
    max_val_images: Annotated[int | None, typer.Option("--max-val-images", min=1)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    roi_op: RoiOpOpt = "align",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads.")] = None,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fp32 | bf16 (autocast: CPUs with avx512_bf16/AMX, CUDA) | fp16 (CUDA).",
        ),
    ] = "fp32",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train (or fine-tune) Mask R-CNN; keeps last.pt, best.pt (by val segm AP), final.pt."""
    from mrcnn_cli.commands._common import parse_classes
    from mrcnn_cli.train.loop import TrainConfig, train

    names = parse_classes(classes)
    cfg = TrainConfig(
        images=images,
        ann=ann,
        out=out,
        data=data,
        val_data=val_data,
        classes=tuple(names) if names else None,
        val_images=val_images,
        val_ann=val_ann,
        arch=arch,
        init=init,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        eval_every=eval_every,
        max_val_images=max_val_images,
        seed=seed,
        roi_op=roi_op or "align",
        threads=threads,
        device=device,
        precision=precision,
        resume=resume,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} steps/s"),
        TextColumn("{task.fields[losses]}"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task("train", total=steps, rate=0.0, losses="")

        log_lines = not quiet and not console.is_terminal  # a log file gets plain lines

        first_step: list[int] = []  # a resumed run starts past 0; rate counts this run only

        def on_step(step: int, losses: dict[str, float]) -> None:
            first_step[:] = first_step or [step - 1]
            text = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items())
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(
                task, completed=step, losses=text, rate=(step - first_step[0]) / elapsed
            )
            if log_lines and step % 100 == 0:
                console.print(f"step {step}/{steps}  {text}", highlight=False)

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            if not quiet:
                console.print(
                    f"step {step}: bbox AP {metrics['bbox_AP']:.3f}  segm AP "
                    f"{metrics['segm_AP']:.3f} (AP50 {metrics['segm_AP50']:.3f}, "
                    f"AP75 {metrics['segm_AP75']:.3f})"
                )

        state = run_or_exit(lambda: train(cfg, on_step, on_eval), debug)
    if not quiet:
        console.print(
            f"done: {state.step} steps; best val segm AP {state.best_segm_ap:.3f}; "
            f"checkpoints in {out}"
        )


def synth_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Root folder for train/ and val/ (or the clips).")
    ],
    train_images: Annotated[int, typer.Option("--train", min=0)] = 1000,
    val_images: Annotated[int, typer.Option("--val", min=0)] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    size: Annotated[int, typer.Option("--size", min=16, help="Image side in pixels.")] = 128,
    video: Annotated[
        bool,
        typer.Option(
            "--video",
            help="Write tracking clips instead: OUT/clipNN.mp4 (clip k from seed SEED+k) "
            "and their exact MOTChallenge ground truth OUT/gt/clipNN.mot.txt.",
            rich_help_panel="Clips (--video)",
        ),
    ] = False,
    clips: Annotated[int, typer.Option("--clips", min=1, rich_help_panel="Clips (--video)")] = 6,
    frames: Annotated[int, typer.Option("--frames", min=1, rich_help_panel="Clips (--video)")] = 90,
    objects: Annotated[
        int,
        typer.Option(
            "--objects", min=1, help="Moving shapes a clip.", rich_help_panel="Clips (--video)"
        ),
    ] = 4,
    speed: Annotated[
        tuple[float, float],
        typer.Option(
            "--speed", help="Least and most speed, px a frame.", rich_help_panel="Clips (--video)"
        ),
    ] = (1.5, 4.0),
    fps: Annotated[int, typer.Option("--fps", min=1, rich_help_panel="Clips (--video)")] = 10,
    image_frames: Annotated[
        bool,
        typer.Option(
            "--image-frames",
            help="Each clip as a folder of PNG frames (OUT/clipNN/000001.png, ...).",
            rich_help_panel="Clips (--video)",
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a seeded synthetic shapes dataset (COCO format, exact masks), or with --video
    tracking clips with exact ground truth (what benchmarks/bench_tracking.py scores)."""
    if video:
        from mrcnn_cli.train.synthetic_video import write_clip_set

        def job():
            if not 0 <= speed[0] <= speed[1]:
                raise MrcnnError("--speed needs 0 <= least <= most")
            return write_clip_set(out, clips, frames, objects, size, speed, seed, fps,
                                  image_frames)  # fmt: skip

        run_or_exit(job, debug)
        kind = "frame folders" if image_frames else "clips"
        err_console.print(
            f"wrote {clips} {kind} of {frames} frames and their ground truth under {out} "
            f"(gt/clipNN.mot.txt)"
        )
        return
    from mrcnn_cli.train.synthetic import write_splits

    run_or_exit(lambda: write_splits(out, train_images, val_images, seed=seed, size=size), debug)
    err_console.print(f"wrote {train_images} train and {val_images} val images under {out}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("synth")(synth_command)
