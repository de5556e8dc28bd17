"""The template sandbox against an attacker who can edit templates: files outside the directory,
unbounded memory or time, and HTML escaping that depends on which file a line came from."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import tomllib
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import jinja2
import pytest
from typer.testing import CliRunner

from tests.templating import write
from triage.act.compose import make_reply
from triage.act.replies import (
    MAX_OUTPUT,
    RENDER_TIMEOUT,
    ReplyVariables,
    TemplateContact,
    TemplateRenderer,
    make_environment,
)
from triage.cli.main import app
from triage.core.errors import TemplateError
from triage.core.models import Address, Contact, InboundMessage
from triage.core.settings import RepliesSettings

SETTINGS = RepliesSettings(company_name="Example Ltd", signature="The Example team")
SECRET = "imap-password-do-not-mail"
# What a render may allocate at most while being stopped: a few times MAX_OUTPUT, far below the
# ~150 MB each attack below asks for.
PEAK_LIMIT = 50_000_000
# Loose on purpose: the point is "seconds, not minutes", not a benchmark.
FAST = 10.0
SHORT_TIMEOUT = 0.3


def variables(**changes: Any) -> ReplyVariables:
    """Sample variables, with changes."""
    return replace(ReplyVariables.sample(SETTINGS), **changes)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the templates directory that must never reach a reply (the IMAP password)."""
    path = tmp_path / "imap-password"
    path.write_text(SECRET, encoding="utf-8")
    return path


@dataclass
class Attempt:
    """How one render ended: the error (None when it rendered), seconds taken, peak bytes."""

    error: TemplateError | None
    seconds: float
    peak: int


def attempt(render: Callable[[], object]) -> Attempt:
    """Run `render`, measuring its time and the peak of memory it allocated (tracemalloc)."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.monotonic()
    error = None
    try:
        render()
    except TemplateError as exc:
        error = exc
    finally:
        seconds = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
        if not tracing:
            tracemalloc.stop()
    return Attempt(error, seconds, peak)


def render_text(tdir: Path, source: str, **kwargs: Any) -> str:
    write(tdir, "sales.txt", source)
    return TemplateRenderer(tdir, **kwargs).render("sales", variables()).text


# --- 1. files outside the templates directory -----------------------------------------------------

STATEMENTS = [
    '{% include "_x.txt" %}',
    '{% import "_x.txt" as x %}ok',
    '{% from "_x.txt" import y %}ok',
    '{% extends "_x.txt" %}',
    '{% include ["_missing.txt", "_x.txt"] %}',
]


@pytest.mark.parametrize("statement", STATEMENTS)
def test_a_partial_symlinked_out_of_the_directory_is_refused(
    tdir: Path, secret: Path, statement: str
) -> None:
    """Include, import and extends of a symlink that leaves the directory raise a TemplateError
    naming the template, and nothing of the target reaches the output or the message."""
    (tdir / "_x.txt").symlink_to(secret)
    write(tdir, "sales.txt", statement + "\n")
    with pytest.raises(TemplateError) as caught:
        TemplateRenderer(tdir).render("sales", variables())
    assert "template _x.txt resolves outside the templates directory" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("part", ["sales.txt", "sales.html", "sales.subject"])
def test_a_main_template_symlinked_out_of_the_directory_is_refused(
    tdir: Path, secret: Path, part: str
) -> None:
    """The outcome's own files are held to the same rule as partials."""
    (tdir / part).unlink(missing_ok=True)
    (tdir / part).symlink_to(secret)
    expected = f"template {part} resolves outside the templates directory"
    with pytest.raises(TemplateError, match=re.escape(expected)):
        TemplateRenderer(tdir).render("sales", variables())


def test_a_symlinked_subdirectory_out_of_the_directory_is_refused(tdir: Path, secret: Path) -> None:
    """`sub/x.txt` where `sub` links elsewhere: the real path of the file is what counts."""
    (tdir / "sub").symlink_to(secret.parent)
    write(tdir, "sales.txt", '{% include "sub/imap-password" %}\n')
    with pytest.raises(TemplateError, match="template sub/imap-password resolves outside"):
        TemplateRenderer(tdir).render("sales", variables())


def test_symlinks_that_stay_inside_the_directory_work(tmp_path: Path, tdir: Path) -> None:
    """A partial linked to another file of the directory, and a templates directory that is
    itself reached through a symlink (`/etc/triage/templates -> /srv/...`), are fine."""
    write(tdir, "_footer.txt", "-- {{ signature }}")
    (tdir / "_alias.txt").symlink_to(tdir / "_footer.txt")
    write(tdir, "sales.txt", 'Hi\n{% include "_alias.txt" %}\n')
    linked = tmp_path / "linked-templates"
    linked.symlink_to(tdir)
    assert TemplateRenderer(linked).render("sales", variables()).text == "Hi\n-- The Example team\n"


def test_a_partial_swapped_for_a_symlink_after_it_was_cached_is_refused(
    tdir: Path, secret: Path
) -> None:
    """Jinja caches compiled templates by mtime; replacing a good partial with a link (even one
    whose target has the same mtime) is noticed on the next render."""
    footer = write(tdir, "_footer.txt", "-- {{ signature }}")
    write(tdir, "sales.txt", 'Hi\n{% include "_footer.txt" %}\n')
    renderer = TemplateRenderer(tdir)
    assert renderer.render("sales", variables()).text == "Hi\n-- The Example team\n"
    stamp = footer.stat().st_mtime_ns
    os.utime(secret, ns=(stamp, stamp))
    footer.unlink()
    footer.symlink_to(secret)
    with pytest.raises(TemplateError, match=r"_footer\.txt resolves outside") as caught:
        renderer.render("sales", variables())
    assert SECRET not in str(caught.value)


def test_a_main_template_swapped_for_a_symlink_is_not_replaced_by_its_last_good_version(
    tdir: Path, secret: Path
) -> None:
    """A link out of the directory is refused outright, never quietly papered over."""
    renderer = TemplateRenderer(tdir)
    assert renderer.render("sales", variables()).text == "Hello Jane Doe\n"
    (tdir / "sales.txt").unlink()
    (tdir / "sales.txt").symlink_to(secret)
    with pytest.raises(TemplateError, match=r"sales\.txt resolves outside"):
        renderer.render("sales", variables())


def test_a_partial_that_is_not_a_regular_file_is_refused_without_blocking(tdir: Path) -> None:
    """A FIFO in the directory would block the reading thread for ever; it is an error instead."""
    os.mkfifo(tdir / "_pipe.txt")
    write(tdir, "sales.txt", '{% include "_pipe.txt" %}\n')
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            TemplateRenderer(tdir).render("sales", variables())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(FAST)
    if thread.is_alive():  # unblock the reader so the thread ends with the test
        os.close(os.open(tdir / "_pipe.txt", os.O_WRONLY))
        pytest.fail("reading the FIFO blocked the render")
    assert len(outcome) == 1
    assert isinstance(outcome[0], TemplateError)
    assert "_pipe.txt" in str(outcome[0])


def test_check_reports_a_symlink_out_of_the_directory(tdir: Path, secret: Path) -> None:
    """`templates check` names the file and the reason, and does not read the target."""
    (tdir / "_x.txt").symlink_to(secret)
    (tdir / "sales.de.txt").symlink_to(secret)
    problems = [str(p) for p in TemplateRenderer(tdir).check(variables())]
    assert f"{tdir / '_x.txt'}: template _x.txt resolves outside the templates directory" in (
        problems
    )
    assert any("sales.de.txt resolves outside the templates directory" in p for p in problems)
    assert not any(SECRET in p for p in problems)


def test_check_command_prints_a_symlink_escape_on_one_line(
    tdir: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI prints one line per problem and exits 1; no traceback, no secret."""
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    (tdir / "_x.txt").symlink_to(secret)
    write(tdir, "sales.txt", 'Hi\n{% include "_x.txt" %}\n')
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(app, ["templates", "check", "-d", str(tdir)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    lines = [line for line in result.output.splitlines() if "resolves outside" in line]
    assert lines == [
        f"{tdir / '_x.txt'}: template _x.txt resolves outside the templates directory",
        f"{tdir / 'sales.txt'}:2: not allowed in a template: "
        "template _x.txt resolves outside the templates directory",
    ]


# --- 2. memory: growth is refused before it is allocated ------------------------------------------

GROWTH = {
    "str.ljust": '{{ "x".ljust(150000000) }}',
    "str.rjust": '{{ "x".rjust(150000000) }}',
    "str.center": '{{ "x".center(150000000) }}',
    "str.zfill": '{{ "1".zfill(150000000) }}',
    "str.expandtabs": '{{ "\\t".expandtabs(150000000) }}',
    "format filter width": '{{ "%150000000s"|format("x") }}',
    "% width": '{{ "%150000000s" % "x" }}',
    "% precision": '{{ "%.150000000f" % 1.5 }}',
    "% star width": '{{ "%*s" % (150000000, "x") }}',
    "% many fields": '{{ ("%s" * 1000) % (("x" * 150000,) * 1000) }}',
    "str.format width": '{{ "{:>150000000}".format("x") }}',
    "str.format nested width": '{{ "{:>{}}".format("x", 150000000) }}',
    "str.format many fields": '{{ ("{0}" * 1000).format("x" * 150000) }}',
    "str.format_map width": '{{ "{w:>150000000}".format_map({"w": "x"}) }}',
    "format through attr": '{{ ("{:>150000000}"|attr("format"))("x") }}',
    "~ doubling": '{% set a = "x" * 150000 %}'
    + "{% set a = a ~ a ~ a ~ a %}" * 5
    + "{{ a|length }}",
    "+ doubling": '{% set a = "x" * 150000 %}'
    + "{% set a = a + a + a + a %}" * 5
    + "{{ a|length }}",
    "join filter": '{{ ("x" * 150000)|list|join("y" * 1000) }}',
    "str.join": '{{ ("y" * 1000).join(("x" * 150000)|list) }}',
    "str.replace": '{{ ("x" * 150000).replace("x", "y" * 1000) }}',
    "replace filter": '{{ ("x" * 150000)|replace("x", "y" * 1000) }}',
    "str.translate": '{{ ("x" * 150000).translate({120: "y" * 1000}) }}',
    "indent filter": '{{ ("\\n" * 150000)|indent(1000) }}',
    "center filter": '{{ "x"|center(150000000) }}',
    "wordwrap filter": '{{ ("x " * 75000)|wordwrap(1, wrapstring="y" * 2000) }}',
    "urlize filter": '{{ ("a.com " * 20000)|urlize(target="y" * 7500) }}',
    "list * n": '{{ (["x"] * 20000000)|length }}',
    "batch filter": '{{ [1]|batch(20000000, "x")|list|length }}',
    "slice filter": "{{ [1]|slice(2500000)|list|length }}",
    "sum of lists": '{% set l = ["x"] * 100000 %}{{ ([l] * 150)|sum(start=[])|length }}',
    "range": "{{ range(150000000)|length }}",
    "set block": '{% set a = "x" * 150000 %}'
    "{% set b %}{% for i in range(1000) %}{{ a }}{% endfor %}{% endset %}{{ b|length }}",
    "macro output": '{% set a = "x" * 150000 %}'
    "{% macro m() %}{% for i in range(1000) %}{{ a }}{% endfor %}{% endmacro %}"
    "{{ m()|length }}",
    "filter block": '{% set a = "x" * 150000 %}'
    "{% filter length %}{% for i in range(1000) %}{{ a }}{% endfor %}{% endfilter %}",
    "integer power": "{{ (((10 ** 64) ** 64) ** 64) ** 64 > 0 }}",
}


@pytest.mark.parametrize("source", GROWTH.values(), ids=GROWTH.keys())
def test_growth_is_refused_before_it_is_allocated(tdir: Path, source: str) -> None:
    """Each of these would build ~150 MB (or compute for a minute) before the output limit was
    looked at; now the operation itself is refused: TemplateError, fast, and the peak of
    allocated memory stays far below what the attack asked for."""
    write(tdir, "sales.txt", source)
    result = attempt(lambda: TemplateRenderer(tdir).render("sales", variables()))
    assert result.error is not None, "rendered"
    assert result.seconds < FAST
    assert result.peak < PEAK_LIMIT


def test_the_ljust_attack_reports_what_was_refused(tdir: Path) -> None:
    """The operator learns which file and what kind of operation; nothing is rendered."""
    write(tdir, "sales.txt", 'Hi\n{{ "x".ljust(150000000) }}\n')
    with pytest.raises(
        TemplateError, match=r"sales\.txt:2: not allowed in a template: .*longer than 200000"
    ):
        TemplateRenderer(tdir).render("sales", variables())


def test_growth_in_the_html_part_is_refused_too(tdir: Path) -> None:
    """Markup strings (the autoescaped HTML part) go through the same checks."""
    write(tdir, "sales.html", '{{ "{:>150000000}".format(contact.name) }}')
    result = attempt(lambda: TemplateRenderer(tdir).render("sales", variables()))
    assert result.error is not None
    assert result.peak < PEAK_LIMIT


ORDINARY = {
    '{{ "x".ljust(3) }}|': "x  |",
    '{{ "7".zfill(3) }}': "007",
    '{{ "%5s"|format("x") }}': "    x",
    '{{ "%-3s|%.2f|%%" % ("x", 1.5) }}': "x  |1.50|%",
    '{{ "%(a)s" % {"a": 1} }}': "1",
    '{{ "{:>3}|{:.1f}|{}".format("x", 2.25, [1]) }}': "  x|2.2|[1]",
    '{{ "{a}".format_map({"a": 1}) }}': "1",
    '{{ "a" ~ 1 ~ "b" }}': "a1b",
    '{{ "a" + "b" }}|{{ ([1] + [2])|length }}|{{ 1 + 2 }}': "ab|2|3",
    '{{ [1, 2]|join(", ") }}': "1, 2",
    '{{ ", ".join(["a", "b"]) }}': "a, b",
    '{{ "a-b".replace("-", "--") }}|{{ "a-b"|replace("-", "+") }}': "a--b|a+b",
    '{{ "abc".translate({97: "A"}) }}': "Abc",
    '{{ "a\\nb"|indent(2) }}': "a\n  b",
    '{{ "x"|center(5) }}': "  x  ",
    '{{ "one two three"|wordwrap(7) }}': "one two\nthree",
    "{{ [1, 2, 3]|batch(2, 0)|list }}": "[[1, 2], [3, 0]]",
    "{{ [1, 2, 3]|slice(2)|list }}": "[[1, 2], [3]]",
    "{{ [[1], [2]]|sum(start=[]) }}": "[1, 2]",
    "{{ 2 ** 10 }}|{{ 3 * 4 }}|{{ [0] * 3 }}": "1024|12|[0, 0, 0]",
    "{% set b %}a{{ 1 }}b{% endset %}{{ b }}": "a1b",
    "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}": "<1>",
    "{% filter upper %}ab{% endfilter %}": "AB",
    '{{ "see www.example.com"|urlize }}': 'see <a href="https://www.example.com" '
    'rel="noopener">www.example.com</a>',
}


@pytest.mark.parametrize(("source", "expected"), ORDINARY.items(), ids=ORDINARY.keys())
def test_ordinary_formatting_still_works(tdir: Path, source: str, expected: str) -> None:
    """The checks only refuse sizes beyond the output limit; everyday formatting is unchanged."""
    assert render_text(tdir, source) == expected


# --- 3. time ----------------------------------------------------------------------------------

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_nested_loops_stop_at_the_render_time_limit(tdir: Path) -> None:
    """Ten billion empty iterations would take many minutes; the render stops at the default
    time limit with a TemplateError that names the file."""
    write(tdir, "sales.txt", "Hi\n" + NESTED_LOOPS + "\n")
    result = attempt(lambda: TemplateRenderer(tdir).render("sales", variables()))
    assert result.error is not None
    assert f"took longer than {RENDER_TIMEOUT:g} s" in str(result.error)
    assert str(tdir / "sales.txt") in str(result.error)
    assert result.seconds < FAST
    assert result.peak < PEAK_LIMIT


SLOW = {
    "include": ('{% include "_loop.txt" %}', "_loop.txt"),
    "import": ('{% import "_loop.txt" as m %}{{ m.spin() }}', "_loop.txt"),
    "macro": ("{% macro spin() %}" + NESTED_LOOPS + "{% endmacro %}{{ spin() }}", ""),
    "set block": ("{% set b %}" + NESTED_LOOPS + "{% endset %}{{ b }}", ""),
    "filters": (
        "{% for i in range(100000) %}{{ range(100000)|list|sort|length * 0 }}{% endfor %}",
        "",
    ),
}


@pytest.mark.parametrize(("source", "partial"), SLOW.values(), ids=SLOW.keys())
def test_slow_work_anywhere_in_a_render_is_stopped(tdir: Path, source: str, partial: str) -> None:
    """Loops in partials, macros, captured blocks, or long chains of filters: all are stopped."""
    if partial:
        write(tdir, partial, "{% macro spin() %}" + NESTED_LOOPS + "{% endmacro %}{{ spin() }}")
    write(tdir, "sales.txt", source)
    renderer = TemplateRenderer(tdir, render_timeout=SHORT_TIMEOUT)
    result = attempt(lambda: renderer.render("sales", variables()))
    assert result.error is not None
    assert "took longer than" in str(result.error)
    assert result.seconds < FAST


def test_the_time_limit_works_in_an_account_thread(tdir: Path) -> None:
    """Replies are rendered in account threads, where signals cannot reach; the limit holds."""
    write(tdir, "sales.txt", NESTED_LOOPS)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            TemplateRenderer(tdir, render_timeout=SHORT_TIMEOUT).render("sales", variables())
        except TemplateError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(FAST)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert "took longer than" in str(errors[0])


def test_template_render_is_time_limited_too(tmp_path: Path) -> None:
    """`Template.render` of the sandbox (what the digest uses) has the same time limit."""
    env = make_environment(tmp_path, render_timeout=SHORT_TIMEOUT)
    start = time.monotonic()
    with pytest.raises(jinja2.TemplateError, match="took longer than"):
        env.from_string(NESTED_LOOPS).render()
    assert time.monotonic() - start < FAST


def test_a_trace_function_in_place_is_kept_and_restored(tdir: Path) -> None:
    """A debugger's or coverage's trace function still sees the render, and is back afterwards,
    whether the render succeeded or ran out of time."""
    seen: list[str] = []

    def probe(frame: FrameType, event: str, arg: object) -> Any:
        seen.append(frame.f_code.co_filename)
        return None

    renderer = TemplateRenderer(tdir, render_timeout=SHORT_TIMEOUT)
    sys.settrace(probe)
    try:
        renderer.render("sales", variables())
        after_success = sys.gettrace()
        write(tdir, "sales.txt", NESTED_LOOPS)
        with pytest.raises(TemplateError, match="took longer than"):
            TemplateRenderer(tdir, render_timeout=SHORT_TIMEOUT).render("sales", variables())
        after_timeout = sys.gettrace()
    finally:
        sys.settrace(None)
    assert after_success is probe
    assert after_timeout is probe
    assert str(tdir / "sales.txt") in seen


def test_no_trace_function_is_left_behind(tdir: Path) -> None:
    """Outside a render nothing is traced: the cost is paid only while a template runs."""
    before = sys.gettrace()
    TemplateRenderer(tdir).render("sales", variables())
    assert sys.gettrace() is before


def test_a_runaway_edit_falls_back_to_the_last_good_version(
    tdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon's live-edit rule holds for these errors too: a reply from the previous version,
    one warning for the broken edit."""
    renderer = TemplateRenderer(tdir, render_timeout=SHORT_TIMEOUT)
    assert renderer.render("sales", variables()).text == "Hello Jane Doe\n"
    write(tdir, "sales.txt", '{{ "x".ljust(150000000) }}' + NESTED_LOOPS)
    with caplog.at_level(logging.WARNING, logger="triage.act.replies"):
        for _ in range(2):
            assert renderer.render("sales", variables()).text == "Hello Jane Doe\n"
    warnings = [r.getMessage() for r in caplog.records if "sales.txt" in r.getMessage()]
    assert len(warnings) == 1
    assert "longer than 200000" in warnings[0]


@pytest.mark.parametrize("source", ['{{ "x".ljust(150000000) }}', NESTED_LOOPS])
def test_a_runaway_template_makes_no_reply(tdir: Path, source: str) -> None:
    """Without a version that ever worked, the pipeline's call raises TemplateError, which the
    service records as `reply-failed` instead of sending anything."""
    write(tdir, "sales.txt", source)
    msg = InboundMessage(
        message_id="<q-1@client.example>",
        subject="Quote",
        from_=Address("Pat", "pat@client.example"),
        to=(Address("", "hello@example.test"),),
        contact=Contact(name="Pat", email="pat@client.example"),
    )
    renderer = TemplateRenderer(tdir, render_timeout=SHORT_TIMEOUT)
    with pytest.raises(TemplateError):
        make_reply(msg, Address("Pat", "pat@client.example"), "sales", renderer, SETTINGS)


def test_output_is_limited_while_it_is_produced(tdir: Path) -> None:
    """A loop printing 150 MB stops as soon as MAX_OUTPUT is passed, not after joining it all."""
    write(tdir, "sales.txt", '{% for i in range(1500) %}{{ "x" * 100000 }}{% endfor %}')
    result = attempt(lambda: TemplateRenderer(tdir).render("sales", variables()))
    assert result.error is not None
    assert f"longer than {MAX_OUTPUT}" in str(result.error)
    assert result.peak < PEAK_LIMIT


# --- 4. escaping follows the part being rendered ----------------------------------------------

EVIL = '<a href="https://evil.example">Claim</a> & Co'


def test_a_txt_partial_included_in_the_html_part_is_escaped(tdir: Path) -> None:
    """A sender name printed by a `.txt` partial must not become a live link in the HTML part;
    the same partial in the text part stays verbatim."""
    write(tdir, "_name.txt", "{{ contact.name }}")
    write(tdir, "sales.txt", 'Hi {% include "_name.txt" %}\n')
    write(tdir, "sales.html", '<p>Hi {% include "_name.txt" %}</p>')
    write(tdir, "sales.subject", '{% include "_name.txt" %}')
    rendered = TemplateRenderer(tdir).render("sales", variables(contact=TemplateContact(EVIL)))
    assert rendered.html is not None
    assert "<a href" not in rendered.html
    escaped = "&lt;a href=&#34;https://evil.example&#34;&gt;Claim&lt;/a&gt; &amp; Co"
    assert rendered.html == f"<p>Hi {escaped}</p>"
    assert rendered.text == f"Hi {EVIL}\n"
    assert rendered.subject == EVIL


def test_macros_imported_from_a_txt_file_escape_in_the_html_part(tdir: Path) -> None:
    """Imports follow the same rule as includes."""
    write(tdir, "_m.txt", "{% macro who(name) %}{{ name }}{% endmacro %}")
    write(tdir, "sales.txt", '{% import "_m.txt" as m %}{{ m.who(contact.name) }}\n')
    write(tdir, "sales.html", '{% import "_m.txt" as m %}<b>{{ m.who(contact.name) }}</b>')
    rendered = TemplateRenderer(tdir).render("sales", variables(contact=TemplateContact(EVIL)))
    assert rendered.html is not None
    assert "<a href" not in rendered.html
    assert rendered.html.startswith("<b>&lt;a href=")
    assert rendered.text == f"{EVIL}\n"


def test_an_html_partial_in_the_text_part_is_not_escaped(tdir: Path) -> None:
    """The text part is plain text whatever its partials are called."""
    write(tdir, "_name.html", "{{ contact.name }}")
    write(tdir, "sales.txt", '{% include "_name.html" %}\n')
    rendered = TemplateRenderer(tdir).render("sales", variables(contact=TemplateContact(EVIL)))
    assert rendered.text == f"{EVIL}\n"


# --- 5. the jinja2 pin --------------------------------------------------------------------------


def test_jinja2_is_pinned_past_the_known_sandbox_escapes() -> None:
    """Jinja2 before 3.1.6 has sandbox escapes (format through |attr, and others)."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.lower().startswith("jinja2")]
    assert pins == ["jinja2>=3.1.6"]


def test_a_finalizer_running_past_the_deadline_does_not_switch_the_time_limit_off() -> None:
    """The garbage collector runs a finalizer inside a render just after the deadline passed:
    the time limit does not fire inside it (its exception would be swallowed and tracing
    switched off for good), and the render is still stopped at the next call after it."""
    import time
    import weakref

    from triage.act.replies import RenderTimeout, _within_time

    class Held:
        pass

    finalized: list[bool] = []

    def step() -> int:
        return 1

    def work() -> int:
        held = Held()
        weakref.finalize(held, lambda: finalized.append(True))
        time.sleep(0.08)  # past the deadline, with no Python call in between
        del held  # the finalizer runs now, the first Python call after the deadline
        return sum(step() for _ in range(200_000))

    with pytest.raises(RenderTimeout):
        _within_time(0.05, work)
    assert finalized == [True]
