"""What every command shares: the one-line error handler and the model options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from mrcnn_cli.errors import MrcnnError

T = TypeVar("T")
err_console = Console(stderr=True)


def run_or_exit(fn: Callable[[], T], debug: bool = False) -> T:
    """Call `fn`; turn a user-facing error into one red line and its exit code.

    `--debug` re-raises so the traceback is there when someone needs it.
    """
    try:
        return fn()
    except MrcnnError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; rerun the same command to resume")
        raise typer.Exit(130) from None


def parse_classes(value: str | None) -> list[str] | None:
    """`--classes person,car,3` -> ['person', 'car', '3'] (names or ids, resolved later)."""
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


# Options shared by segment, video and eval.
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model name (maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2, demo) "
        "or a checkpoint path written by `mrcnn train`.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", "-w", help="Checkpoint file for a torchvision model."),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto | cpu | cuda | cuda:N (auto picks CUDA if present).")
]
HalfOpt = Annotated[bool, typer.Option("--half", help="fp16 inference (CUDA only).")]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Images per forward (default: 1 on the CPU, where batching only adds padding; "
        "4 on CUDA).",
    ),
]
ScoreThrOpt = Annotated[float, typer.Option("--score-thr", help="Minimum score.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Decode/write threads.")]
MaxDetOpt = Annotated[
    int, typer.Option("--max-det", min=1, help="At most this many detections per image.")
]
ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Keep only these classes: comma-separated names or ids."),
]
MaskThrOpt = Annotated[
    float, typer.Option("--mask-thr", min=0.0, max=1.0, help="Mask probability threshold.")
]
RoiOpOpt = Annotated[
    str | None,
    typer.Option(
        "--roi-op",
        help="align (RoIAlign) or pool (quantised RoIPool); default: the model's own (a "
        "checkpoint's training setting, else align).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one line.")]


def finish_run(summary, quiet: bool, json_out: bool) -> None:
    """Print the summary (table on stderr, or JSON on stdout) and exit 1 if files failed."""
    from mrcnn_cli.errors import EXIT_SOME_FAILED
    from mrcnn_cli.progress import print_summary, summary_json

    if json_out:
        typer.echo(summary_json(summary))
    elif not quiet:
        print_summary(summary, err_console)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def parse_save_kinds(value: str, allowed: str) -> tuple[str, ...]:
    """`--save overlay,coco` -> ('overlay', 'coco'), order kept, duplicates dropped."""
    kinds = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    if not kinds:
        raise MrcnnError(f"--save needs at least one of {allowed}")
    return kinds


def model_config(
    model: str,
    weights: str | None,
    device: str,
    half: bool,
    score_thr: float,
    max_det: int,
    classes: str | None,
    mask_thr: float,
    roi_op: str | None,
    random_weights: int | None,
):
    """The model options every inference command shares -> one `ModelConfig`."""
    from mrcnn_cli.engine import ModelConfig

    names = parse_classes(classes)
    return ModelConfig(
        model=model,
        weights=weights,
        device=device,
        half=half,
        score_thr=score_thr,
        max_det=max_det,
        classes=tuple(names) if names else None,
        mask_thr=mask_thr,
        roi_op=roi_op,
        random_init_seed=random_weights,
    )


RandomWeightsOpt = Annotated[
    int | None, typer.Option("--random-weights", hidden=True, help="Seeded random init.")
]
