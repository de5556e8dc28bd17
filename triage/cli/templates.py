"""`triage templates check|preview`: check reply templates and show the complete reply.

Both work without a configuration file (default reply settings; the templates in `./templates` when
there is such a folder, so an admin can edit a copy on a workstation, else the ones shipped with
triage); with `--config` they use the configured settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from triage.cli.common import EXIT_FAILURE, fail, load, options, user_errors

if TYPE_CHECKING:
    from triage.core.models import InboundMessage
    from triage.core.settings import RepliesSettings

app = typer.Typer(help="Check and preview reply templates.", no_args_is_help=True)

TemplatesDir = Annotated[
    Path | None,
    typer.Option(
        "--templates-dir",
        "-d",
        help="Templates directory (default: replies.templates_dir; without a config ./templates "
        "if present, else the shipped templates).",
        file_okay=False,
    ),
]


def _replies(ctx: typer.Context, templates_dir: Path | None) -> RepliesSettings:
    """The reply settings: from the configuration when one is given, else the defaults."""
    from triage.core.settings import CONFIG_ENV, RepliesSettings
    from triage.ops.logs import setup_logging

    if options(ctx).config is not None or os.environ.get(CONFIG_ENV):
        replies = load(ctx).replies
    else:
        setup_logging()
        replies = RepliesSettings()
        local = Path("templates")
        if local.is_dir():
            replies = replies.model_copy(update={"templates_dir": local})
    if templates_dir is not None:
        replies = replies.model_copy(update={"templates_dir": templates_dir})
    return replies


@app.command("check")
def check(ctx: typer.Context, templates_dir: TemplatesDir = None) -> None:
    """Render every template against sample data; report syntax errors (file:line) and unknown
    variables. Exits 1 when anything is wrong."""
    from triage.act.replies import ReplyVariables, TemplateRenderer

    replies = _replies(ctx, templates_dir)
    with user_errors():
        renderer = TemplateRenderer.from_settings(replies)
        problems = renderer.check(ReplyVariables.sample(replies))
        outcomes = renderer.outcomes()
    for problem in problems:
        print(problem)
    for name, languages in outcomes.items():
        variants = ", ".join(lang or "default" for lang in languages)
        print(f"{name}: {variants}")
    if problems:
        fail(f"{len(problems)} problem(s) in {replies.templates_dir}", EXIT_FAILURE)
    print(f"templates ok ({replies.templates_dir})")


@app.command("preview")
def preview(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Outcome to preview, e.g. sales or marketing.")],
    message: Annotated[
        Path | None,
        typer.Option(
            "--message", "-m", help="Answer this .eml file instead of a sample.", dir_okay=False
        ),
    ] = None,
    lang: Annotated[
        str | None, typer.Option("--lang", "-l", help="Language variant, e.g. de.")
    ] = None,
    trusted: Annotated[
        bool | None,
        typer.Option(
            "--trusted/--untrusted",
            help="Preview the reply to an authenticated sender (name, company and subject "
            "repeated) or the fixed-text one. Default: trusted for the sample, as the guards "
            "decide for --message.",
        ),
    ] = None,
    templates_dir: TemplatesDir = None,
) -> None:
    """Print the complete MIME reply that NAME would produce."""
    from dataclasses import replace

    from triage.act.compose import make_reply
    from triage.act.replies import TemplateRenderer
    from triage.core.models import Address
    from triage.decide.guards import GuardContext, route

    replies = _replies(ctx, templates_dir)
    msg = _read_message(message) if message is not None else _sample_message(replies)
    if lang is not None:
        msg = replace(msg, language=lang)
    # Files have no Return-Path, and a preview must show a reply even to a message we'd skip.
    guard_ctx = GuardContext.from_settings(replies, None, require_return_path=False)
    where = route(msg, guard_ctx)
    if trusted is None:
        trusted = message is None or where.reflect
    dest = where.address or Address("", "recipient@example.invalid")
    if trusted and message is None:
        dest = msg.from_ or dest
    with user_errors():
        renderer = TemplateRenderer.from_settings(replies)
        reply = make_reply(
            msg, dest, name, renderer, replies, lead_owner="Sam Seller", trusted=trusted
        )
    print(reply.message().as_string(), end="")


def _read_message(path: Path) -> InboundMessage:
    from triage.parsing import parse

    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    return parse(raw)


def _sample_message(replies: RepliesSettings) -> InboundMessage:
    from triage.core.models import Address, Contact, InboundMessage

    return InboundMessage(
        message_id="<sample-inquiry@doe-logistics.example>",
        subject="Quote for 40 units",
        from_=Address("Jane Doe", "jane@doe-logistics.example"),
        to=(Address("", replies.from_address),),
        language=replies.default_language,
        contact=Contact(
            name="Jane Doe", company="Doe Logistics GmbH", email="jane@doe-logistics.example"
        ),
    )
