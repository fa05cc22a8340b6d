"""`python -m scoring_services ...`: the same as `modelops scoring-service ...`, without the scheduler's CLI."""

from __future__ import annotations

import typer

from scoring_services.cli import serve_command


def main() -> None:
    typer.run(serve_command)


if __name__ == "__main__":
    main()
