"""`modelops init` and `modelops score`: from a model file and a data file to a pipeline, and to scored rows.

Registered on the top-level `modelops` app by `scheduler.cli`; `score` runs the written pipeline with the
same code as `modelops run` (embedded scheduler, live progress).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scheduler.scaffold import InitReport, ScaffoldError, init_pipeline, relative_to_cwd

__all__ = ["init_command", "score_command"]

err = Console(stderr=True, highlight=False, soft_wrap=True)

_TRUST = (
    "Loading a pickled model (scikit-learn .joblib/.pkl) runs code: init and score load only the files named on "
    "this command line, which is your own trust; a pipeline deployed to a server is bound by its settings."
)


def _print_report(report: InitReport, verbose: bool = True) -> None:
    if verbose:
        for line in report.decisions:
            err.print(f"  {line}")
    for todo in report.todos:
        err.print(f"  [yellow]TODO[/yellow] {todo}")


def init_command(
    folder: Annotated[Path, typer.Argument(help="The folder to write the pipeline into (created; must be empty).")],
    model: Annotated[
        list[Path], typer.Option("--model", "-m", help="A model file or folder (repeatable: scored in order).")
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="A sample of the data: .csv, .jsonl or .parquet.")],
    sink: Annotated[
        Path | None, typer.Option("--sink", help="Where the scored rows go (default out/scored.<format of data>).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that is not empty.")] = False,
) -> None:
    """Write a complete pipeline folder (pipeline, models, flow, channels) for MODEL(s) and a DATA sample.

    The runtime, sha256, inputs and outputs come from each model; the source schema from the sample; model
    inputs are matched to columns by the model's feature names, or else take the numeric columns in order
    without an id-like column. What could not be decided is written as a `# TODO` comment and listed.
    """
    try:
        report = init_pipeline(folder, model, data, sink=sink, force=force)
    except ScaffoldError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from None
    err.print(
        f"wrote pipeline '{report.name}' to {folder}/ ({len(report.models)} model(s), {report.source_format} "
        f"in, {report.sink_format} out)"
    )
    _print_report(report)
    where = relative_to_cwd(folder)
    inside = report.input_path.is_relative_to(folder.resolve())
    root = "" if inside else f" --data-root {relative_to_cwd(report.input_path.parent)}"
    err.print(f"run it: modelops run {where}{root}   (input: -p input=PATH, output: -p output=PATH)")


init_command.__doc__ = f"{init_command.__doc__}\n\n    {_TRUST}"


def score_command(
    model: Annotated[Path, typer.Argument(help="The model file or folder.")],
    data: Annotated[Path, typer.Argument(help="The data to score: .csv, .jsonl or .parquet (a glob is fine).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The scored file (format from its suffix).")],
    keep: Annotated[Path | None, typer.Option("--keep", help="Keep the generated pipeline in this folder.")] = None,
) -> None:
    """Score DATA with MODEL into OUTPUT: `modelops init` into a temporary folder, then `modelops run` of it on
    the embedded scheduler, with the same live progress. Exit code 0 only when every row was scored."""
    from scheduler import cli

    folder = keep if keep is not None else Path(tempfile.mkdtemp(prefix="modelops-score-"))
    data_path, out_path = data.expanduser().resolve(), output.expanduser().resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            report = init_pipeline(folder, [model], data_path, sink=out_path, force=keep is None)
        except ScaffoldError as exc:
            err.print(f"[red]error[/red] {exc}")
            raise typer.Exit(1) from None
        err.print(
            f"pipeline '{report.name}' for {model.name} ({report.models[0].runtime})"
            + (f" kept in {folder}" if keep is not None else "")
        )
        _print_report(report, verbose=False)
        parameters = {"input": str(data_path), "output": str(out_path)}
        code = cli.run_folder(folder, parameters, extra_roots=[data_path.parent, out_path.parent])
        if code == 0:
            err.print(f"scored rows in {out_path}")
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    raise typer.Exit(code)
