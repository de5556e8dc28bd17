"""The `triage` command: declares the subcommands and global options; holds no logic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from triage.cli import (
    auth,
    candidate,
    config,
    corrections,
    daemon,
    doctor,
    fleet,
    init,
    leads,
    model,
    outbox,
    templates,
    web,
    webhooks,
)
from triage.cli.common import GlobalOptions

app = typer.Typer(
    name="triage",
    help="Answers inbound email inquiries: classify, reply politely, queue hot leads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _global(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="TRIAGE_CONFIG",
            help="TOML settings file (or TRIAGE_CONFIG).",
            dir_okay=False,
        ),
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json.")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING.")] = None,
) -> None:
    """Answers inbound email inquiries: classify, reply politely, queue hot leads."""
    ctx.obj = GlobalOptions(config=config_file, log_format=log_format, log_level=log_level)


app.command("init")(init.init)
app.command("check-config")(config.check_config)
app.command("once")(daemon.once)
app.command("run")(daemon.run)
app.command("train")(model.train)
app.command("evaluate")(model.evaluate)
app.command("classify")(model.classify)
app.command("doctor")(doctor.doctor)
app.add_typer(templates.app, name="templates")
app.add_typer(leads.leads_app, name="leads")
app.add_typer(leads.review_app, name="review")
app.command("digest")(leads.digest)
app.add_typer(outbox.app, name="outbox")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(corrections.app, name="corrections")
app.add_typer(candidate.app, name="model")
app.command("web")(web.web)
app.add_typer(web.users_app, name="users")
app.add_typer(auth.app, name="auth")
app.add_typer(fleet.app, name="fleet")


def main() -> None:
    """Entry point of the `triage` console script."""
    app()
