"""The root `llmctl` command. Engine-side commands come from agent.cli; imports stay lazy."""

from __future__ import annotations

import typer

from agent.cli import register_engine_commands

app = typer.Typer(
    name="llmctl",
    help="llmctl: serve, measure and optimize self-hosted LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
register_engine_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
