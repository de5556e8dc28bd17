"""`triage check-config`: validate settings and show the effective values, secrets masked."""

from __future__ import annotations

import json

import typer

from triage.cli.common import load


def check_config(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the settings as JSON."),
) -> None:
    """Validate the configuration and print the effective settings with secrets masked."""
    settings = load(ctx)
    from triage.core.settings import masked

    data = masked(settings)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for section, values in data.items():
        print(f"[{section}]")
        if isinstance(values, dict):
            for key, value in values.items():
                print(f"{key} = {json.dumps(value, default=str)}")
        print()
    print("configuration ok")
