"""The `modelops` command line: one typer app with a sub-command group per area.

`modelops ir validate|render|schema` work on IR files directly, without a server.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

import ir
from ir.schema import dumps, ir_schema, values_schema

app = typer.Typer(
    name="modelops",
    help="Scoring pipelines for machine-learning models: validate IR, render values, run scoring jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ir_app = typer.Typer(help="Validate and render pipeline IR bundles.", no_args_is_help=True)
app.add_typer(ir_app, name="ir")

# The scoring service (issue 4) lives in scoring_services; its command is only mounted here.
from scoring_services.cli import serve_command  # noqa: E402

app.command("scoring-service")(serve_command)

# markup off: messages quote user input (paths, keys, values), and '[/x]' in them must print as it is
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, soft_wrap=True, markup=False)


def _fail_ir(exc: ir.IRValidationError) -> NoReturn:
    count = len(exc.issues)
    for issue in exc.issues:
        err.print(f"[red]error[/red] {escape(str(issue))}", markup=True)
    err.print(f"{count} problem{'s' if count != 1 else ''} found.")
    raise typer.Exit(1)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err.print(f"error: {option} expects NAME=VALUE, got {item!r}")
            raise typer.Exit(2)
        pairs[name] = value
    return pairs


PathArg = Annotated[
    Path, typer.Argument(help="A folder of IR files, one multi-document YAML/JSON file, or a .tar.gz bundle.")
]


@ir_app.command("validate")
def ir_validate(path: PathArg) -> None:
    """Check an IR bundle; print every problem with its file, document and path."""
    try:
        bundle = ir.load_bundle(path)
    except ir.IRValidationError as exc:
        _fail_ir(exc)
    out.print(
        f"{path}: pipeline '{bundle.name}' is valid: {len(bundle.pipeline.spec.flows)} flow(s), "
        f"{len(bundle.used_models())} model(s), {len(bundle.used_channels())} data channel(s); "
        f"digest {bundle.digest()[:12]}"
    )


@ir_app.command("render")
def ir_render(
    path: PathArg,
    param: Annotated[list[str], typer.Option("--param", "-p", help="A pipeline parameter, NAME=VALUE.")] = [],  # noqa: B006
    set_: Annotated[
        list[str], typer.Option("--set", help="A global setting, KEY=VALUE, e.g. logLevel=debug, image.tag=1.2.")
    ] = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Render the one Helm values document `install` would deploy."""
    params = _pairs(param, "--param")
    try:
        bundle = ir.load_bundle(path)
        sets = list(set_)
        if not any(s.startswith("modelStore=") for s in sets):
            base = path if path.is_dir() else path.parent
            sets.append(f"modelStore={base.resolve().as_uri()}")
        values = ir.render(bundle, params, ir.parse_sets(sets))
    except ir.IRValidationError as exc:
        _fail_ir(exc)
    text = ir.to_yaml(values)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as exc:
        err.print(f"error: cannot write {output}: {exc.strerror}")
        raise typer.Exit(1) from None
    err.print(
        f"wrote {output} ({len(values.scoring_services)} scoring service(s), {len(values.scoring_flows)} flow(s))"
    )


@ir_app.command("schema")
def ir_schema_command(
    kind: Annotated[str, typer.Argument(help="'ir' for the IR documents, 'values' for the rendered values.")] = "ir",
) -> None:
    """Print a JSON Schema: of the IR documents, or of the rendered values."""
    if kind not in ("ir", "values"):
        err.print(f"error: unknown schema {kind!r}: choose 'ir' or 'values'")
        raise typer.Exit(2)
    sys.stdout.write(dumps(ir_schema() if kind == "ir" else values_schema()))


def main() -> None:  # pragma: no cover - console script entry point
    app()
