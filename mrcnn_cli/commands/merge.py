"""`mrcnn merge`: join the output folders of `mrcnn segment --shard K/N` runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mrcnn_cli.commands._common import DebugOpt, JsonOpt, QuietOpt, err_console, run_or_exit


def merge_command(
    folders: Annotated[
        list[Path], typer.Argument(help="Output folders of the shards (all N of them).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged output folder.")] = Path(
        "results"
    ),
    move: Annotated[
        bool,
        typer.Option("--move", help="Move per-image files instead of hard-linking/copying."),
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge shard folders: check they fit (same settings and inputs, none missing or
    doubled), link or copy their files, write one predictions.json and images.json."""
    from mrcnn_cli.distributed.merge import merge_shards
    from mrcnn_cli.errors import EXIT_SOME_FAILED

    summary = run_or_exit(lambda: merge_shards(folders, out, move=move), debug)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        files = f"{summary.linked} linked, {summary.copied} copied, {summary.moved} moved"
        err_console.print(
            f"merged {summary.shards} shards into {out}: {summary.images} images, "
            f"{summary.detections} detections, {len(summary.failed)} failed; files: {files}",
            highlight=False,
            soft_wrap=True,
        )
        for failed in summary.failed:
            err_console.print(f"failed {failed.path}: {failed.reason}", highlight=False)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_command)
