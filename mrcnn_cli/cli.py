"""The `mrcnn` command line: one Typer app, each command in `mrcnn_cli/commands/`."""

from __future__ import annotations

import typer

from mrcnn_cli import __version__
from mrcnn_cli.commands import eval as eval_command
from mrcnn_cli.commands import merge, segment, train, video

app = typer.Typer(
    name="mrcnn",
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
