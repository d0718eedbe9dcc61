"""The `mrcnn` command line: one Typer app, each command in `mrcnn_cli/commands/`."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from mrcnn_cli import __version__
from mrcnn_cli.commands import eval as eval_command
from mrcnn_cli.commands import merge, segment, train, video
from mrcnn_cli.commands._streams import guard_standard_streams
from mrcnn_cli.errors import EXIT_USAGE

# Click's UsageError as this Typer uses it (Typer vendors Click since 0.26, so not
# `click.UsageError`): the base of every parse and range refusal.
UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


def usage_error_line(exc: Any) -> str:
    """Click's usage error as one line: where, what, and where to read more."""
    command = exc.ctx.command_path if exc.ctx is not None else "mrcnn"
    message = " ".join(exc.format_message().split())
    return f"error: {command}: {message} (see '{command} --help')"


class OneLineErrors(TyperGroup):
    """The `mrcnn` group: usage errors (Click's and Typer's own, range checks included)
    are one line on stderr with exit 2, instead of a boxed message wrapped to the
    terminal; and stdout/stderr are guarded so a closed pipe never stops a run."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        guard_standard_streams()
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `mrcnn`: the help
                typer.echo(exc.ctx.get_help())
                sys.exit(0)
            print(usage_error_line(exc), file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="mrcnn",
    cls=OneLineErrors,
    help="Batch instance segmentation with Mask R-CNN: images, folders, videos, COCO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mrcnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Batch instance segmentation with Mask R-CNN."""


for _module in (segment, video, eval_command, train, merge):
    _module.register(app)


def main() -> None:
    app()
