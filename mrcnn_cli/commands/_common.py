"""What every command shares: the one-line error handler and the model options."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

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
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; rerun the same command to resume")
        raise typer.Exit(130) from None


class _ConsoleHandler(logging.Handler):
    """The library's log records (OpenVINO converting, a fallback) as one stderr line each."""

    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        err_console.print(
            f"[{style}]{escape(record.getMessage())}[/]", highlight=False, soft_wrap=True
        )


_handler = _ConsoleHandler()


def show_library_messages(quiet: bool) -> None:
    """Show the library's notes on stderr: warnings always, progress notes unless --quiet."""
    logger = logging.getLogger("mrcnn_cli")
    _handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.setLevel(logging.INFO)
    if _handler not in logger.handlers:
        logger.addHandler(_handler)


def parse_classes(value: str | None) -> list[str] | None:
    """`--classes person,car,3` -> ['person', 'car', '3'] (names or ids, resolved later)."""
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


# --- the model options, declared once ----------------------------------------------
def _model_option(*decls: str, **kwargs: Any) -> Any:
    """A Typer option shown under "Model" in --help."""
    return typer.Option(*decls, rich_help_panel="Model", **kwargs)


def _class_thr_callback(value: str | None) -> str | None:
    """Check `--class-thr`'s syntax while Click parses, so a typo is a usage error (exit 2)."""
    from mrcnn_cli.config import parse_class_thresholds

    try:
        parse_class_thresholds(value)
    except MrcnnError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--class-thr: ")) from None
    return value


def _model_option_parameters(score_thr: float, score_help: str, with_classes: bool):
    """(name, default, annotation) of every model option, in the order --help shows them."""
    params = [
        ("model", None, Annotated[str | None, _model_option(
            "--model", "-m", help="Model name (maskrcnn_resnet50_fpn (default), "
            "maskrcnn_resnet50_fpn_v2, demo) or a checkpoint path written by `mrcnn train`.")]),
        ("weights", None, Annotated[str | None, _model_option(
            "--weights", "-w", help="Checkpoint file for a torchvision model.")]),
        ("device", "auto", Annotated[str, _model_option(
            "--device", help="auto | cpu | cuda | cuda:N (auto picks CUDA if present).")]),
        ("precision", "fp32", Annotated[str, _model_option(
            "--precision", help="fp32 (exact: torchvision's numbers) | bf16 (CPUs with "
            "avx512_bf16/AMX, CUDA; ~2x faster on such CPUs) | fp16 (CUDA).")]),
        ("backend", "auto", Annotated[str, _model_option(
            "--backend", envvar="MRCNN_BACKEND", help="auto (OpenVINO on a CPU, torch on "
            "CUDA) | torch (exact: torchvision's numbers) | openvino (dense layers compiled "
            "by OpenVINO: faster on a CPU, equal up to rounding; see README \"Backends\").")]),
        ("half", False, Annotated[bool, _model_option(
            "--half", help="Same as --precision fp16 (CUDA only).")]),
        ("channels_last", None, Annotated[bool | None, _model_option(
            "--channels-last/--no-channels-last", help="Channels-last backbone memory "
            "(default: on for bf16/fp16; off for fp32, where it rounds differently).")]),
        ("score_thr", score_thr, Annotated[float, _model_option(
            "--score-thr", min=0.0, max=1.0, help=score_help)]),
        ("max_det", 100, Annotated[int, _model_option(
            "--max-det", min=1, help="At most this many detections per image.")]),
        ("classes", None, Annotated[str | None, _model_option(
            "--classes", help="Keep only these classes: comma-separated names or ids.")]),
        ("class_thr", None, Annotated[str | None, _model_option(
            "--class-thr", metavar="NAME=SCORE,...", callback=_class_thr_callback,
            help="Per-class score thresholds, e.g. person=0.7,car=0.3 (names or ids); "
            "other classes use --score-thr.")]),
        ("mask_thr", 0.5, Annotated[float, _model_option(
            "--mask-thr", min=0.0, max=1.0, help="Mask probability threshold.")]),
        ("roi_op", None, Annotated[str | None, _model_option(
            "--roi-op", help="align (RoIAlign) or pool (quantised RoIPool); default: the "
            "model's own (a checkpoint's training setting, else align).")]),
        ("tile", None, Annotated[int | None, _model_option(
            "--tile", min=16, help="Sliced inference: run overlapping tiles of this many pixels "
            "at native resolution and merge them (small objects in large images).")]),
        ("tile_overlap", 0.2, Annotated[float, _model_option(
            "--tile-overlap", min=0.0, max=0.9, help="Overlap between tiles, a fraction.")]),
        ("tile_full", False, Annotated[bool, _model_option(
            "--tile-full", help="With --tile, also run the whole image (large objects).")]),
        ("random_weights", None, Annotated[int | None, _model_option(
            "--random-weights", hidden=True, help="Seeded random init (tests, benchmarks).")]),
    ]  # fmt: skip
    return [p for p in params if with_classes or p[0] != "classes"]


def model_options(
    score_thr: float = 0.5,
    score_help: str = "Minimum score.",
    with_classes: bool = True,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a Typer command the shared model options; it receives them as `model_config`.

    The command declares a `model_config: ModelConfig` parameter (and, if it cares
    whether --model was typed, `model_given: bool`); the options themselves are added to
    its signature here, so every command spells them the same way.
    """
    from mrcnn_cli.config import DEFAULT_MODEL, ModelConfig, parse_class_thresholds

    extra = _model_option_parameters(score_thr, score_help, with_classes)
    names = [name for name, _, _ in extra]

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)  # Typer needs real types
        wants_given = "model_given" in sig.parameters
        own = [
            p.replace(annotation=hints[n])
            for n, p in sig.parameters.items()
            if n not in ("model_config", "model_given")
        ]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for name, d, a in extra
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            v = {name: kwargs.pop(name, None) for name in names}
            names_given = parse_classes(v["classes"]) if with_classes else None
            kwargs["model_config"] = ModelConfig(
                model=v["model"] or DEFAULT_MODEL,
                weights=v["weights"],
                device=v["device"],
                precision="fp16" if v["half"] else v["precision"],
                channels_last=v["channels_last"],
                score_thr=v["score_thr"],
                max_det=v["max_det"],
                classes=tuple(names_given) if names_given else None,
                class_thr=parse_class_thresholds(v["class_thr"]),
                mask_thr=v["mask_thr"],
                roi_op=v["roi_op"],
                tile=v["tile"],
                tile_overlap=v["tile_overlap"],
                tile_full=v["tile_full"],
                random_init_seed=v["random_weights"],
                backend=v["backend"],
            )
            show_library_messages(bool(kwargs.get("quiet")))
            if wants_given:
                kwargs["model_given"] = v["model"] is not None
            return fn(**kwargs)

        command.__annotations__ = {
            **{p.name: p.annotation for p in own},
            **{n: a for n, _, a in extra},
            "return": None,
        }
        command.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return command

    return decorate


# --- other options shared by several commands ------------------------------------
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output folder.")]


def output_folder(value: str) -> Path:
    """`--out` as a Path; an empty value is an error (Path("") would quietly mean ".")."""
    if not value.strip():
        raise MrcnnError("--out is empty; give an output folder")
    return Path(value)


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
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Decode/write threads.")]
RoiOpOpt = Annotated[
    str | None,
    typer.Option(
        "--roi-op",
        help="align (RoIAlign) or pool (quantised RoIPool); default: the model's own (a "
        "checkpoint's training setting, else align).",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bar or summary table (failures still print)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one line.")]
TrackOpt = Annotated[
    bool,
    typer.Option(
        "--track",
        help="Follow objects through each video (ByteTrack): a track id per detection, colours "
        "that follow the object, <stem>.tracks.csv; --save mot for MOTChallenge files.",
        rich_help_panel="Tracking",
    ),
]
TrackBufferOpt = Annotated[
    int,
    typer.Option(
        "--track-buffer",
        min=0,
        help="Model frames a lost track is kept before its id is retired.",
        rich_help_panel="Tracking",
    ),
]


TrackerOpt = Annotated[
    str,
    typer.Option(
        "--tracker",
        help="bytetrack (default) | ocsort (OC-SORT: steadier through occlusions, "
        "see the README's figures).",
        rich_help_panel="Tracking",
    ),
]


def track_settings(track: bool, buffer: int, method: str):
    """`--track`/`--track-buffer`/`--tracker` as the job's TrackSettings (None: no tracking)."""
    from mrcnn_cli.config import TrackSettings

    return TrackSettings(buffer=buffer, method=method) if track else None


def progress_for(quiet: bool):
    """The rich progress bar for a run on stderr. `--quiet` drops the bar (and the
    summary table), never the failure lines: a script's log must still say what failed."""
    from mrcnn_cli.commands._progress import RichProgress

    return RichProgress(enabled=not quiet, console=err_console)


def finish_run(summary, quiet: bool, json_out: bool) -> None:
    """Print the summary (table on stderr, or JSON on stdout) and exit 1 if files failed."""
    from mrcnn_cli.commands._progress import print_summary
    from mrcnn_cli.errors import EXIT_SOME_FAILED
    from mrcnn_cli.progress import summary_json

    if json_out:
        typer.echo(summary_json(summary))
    elif not quiet:
        print_summary(summary, err_console)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def parse_save_kinds(value: str) -> tuple[str, ...]:
    """`--save overlay,coco` -> ('overlay', 'coco'), order kept, duplicates dropped.

    The job's config checks the kinds against what it can write.
    """
    return tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
