"""Reply templates: choosing files by outcome and language, the sandbox, live edits, checking."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.templating import write
from triage.act.replies import (
    Problem,
    ReplyVariables,
    TemplateContact,
    TemplateRenderer,
)
from triage.core.errors import TemplateError
from triage.core.models import Address, Contact, InboundMessage
from triage.core.sanitize import one_line
from triage.core.settings import RepliesSettings

REPO_TEMPLATES = Path(__file__).parents[1] / "templates"
SETTINGS = RepliesSettings(company_name="Example Ltd", signature="The Example team")


def variables(**changes: object) -> ReplyVariables:
    """Sample variables, with changes."""
    base = ReplyVariables.sample(SETTINGS)
    data = {f: getattr(base, f) for f in base.__dataclass_fields__} | changes
    return ReplyVariables(**data)


# --- the shipped templates ------------------------------------------------------------------------


def test_shipped_templates_pass_the_check() -> None:
    """The templates in the repository render against sample data without a single problem."""
    renderer = TemplateRenderer(REPO_TEMPLATES)
    assert renderer.check(ReplyVariables.sample(SETTINGS)) == []
    assert renderer.outcomes() == {"marketing": ["", "de", "fr"], "sales": ["", "de", "fr"]}


@pytest.mark.parametrize("name", ["sales", "marketing"])
@pytest.mark.parametrize("lang", ["", "en", "de", "fr", "de-AT", "es"])
def test_shipped_templates_render_every_language(name: str, lang: str) -> None:
    """Each outcome renders text and HTML in each language, with the contact and signature."""
    rendered = TemplateRenderer(REPO_TEMPLATES).render(name, variables(), lang)
    assert rendered.language == {"de": "de", "de-AT": "de", "fr": "fr"}.get(lang, "")
    assert "Jane Doe" in rendered.text
    assert "The Example team" in rendered.text
    assert rendered.html is not None
    assert "Jane Doe" in rendered.html
    assert rendered.subject == "Quote for 40 units"


def test_subject_falls_back_when_the_inquiry_had_none() -> None:
    """Without an original subject the template's own wording is used."""
    rendered = TemplateRenderer(REPO_TEMPLATES).render("sales", variables(original_subject=""))
    assert rendered.subject == "Your inquiry to Example Ltd"


def test_html_is_autoescaped_and_text_is_not() -> None:
    """Markup in a contact name is shown, not executed, in the HTML part; text stays verbatim."""
    evil = TemplateContact(name="<script>alert(1)</script> & Co")
    rendered = TemplateRenderer(REPO_TEMPLATES).render("sales", variables(contact=evil))
    assert rendered.html is not None
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in rendered.html
    assert "<script>alert(1)</script> & Co" in rendered.text


# --- choosing files -------------------------------------------------------------------------------


def test_language_variant_falls_back_to_the_base(tdir: Path) -> None:
    """`marketing.de.txt` → `marketing.txt`: an unknown language uses the base set."""
    write(tdir, "sales.de.txt", "Hallo {{ contact.name }}\n")
    renderer = TemplateRenderer(tdir)
    assert renderer.render("sales", variables(), "de").text == "Hallo Jane Doe\n"
    assert renderer.render("sales", variables(), "de-CH").text == "Hallo Jane Doe\n"
    assert renderer.render("sales", variables(), "it").text == "Hello Jane Doe\n"
    assert renderer.render("sales", variables(), "").text == "Hello Jane Doe\n"


def test_default_language_uses_the_base_files(tdir: Path) -> None:
    """The base files are in `default_language`; a variant of that language is not looked for."""
    write(tdir, "sales.en.txt", "never used\n")
    assert (
        TemplateRenderer(tdir, "en").render("sales", variables(), "en").text == "Hello Jane Doe\n"
    )


def test_variant_borrows_the_base_subject_but_never_the_html(tdir: Path) -> None:
    """A German text with an English HTML part would be worse than the German text alone."""
    write(tdir, "sales.html", "<p>English</p>")
    write(tdir, "sales.de.txt", "Hallo\n")
    rendered = TemplateRenderer(tdir).render("sales", variables(), "de")
    assert rendered.subject == "Quote for 40 units"
    assert rendered.html is None
    assert rendered.files == ("sales.subject", "sales.de.txt")


def test_missing_subject_file_uses_the_original_subject(tdir: Path) -> None:
    """`NAME.subject` is optional."""
    (tdir / "sales.subject").unlink()
    assert TemplateRenderer(tdir).render("sales", variables()).subject == "Quote for 40 units"


def test_subject_is_one_line(tdir: Path) -> None:
    """A subject template that renders several lines cannot produce a multi-line header."""
    write(tdir, "sales.subject", "Thanks\r\nBcc: victim@example.test\n{{ original_subject }}\n")
    subject = TemplateRenderer(tdir).render("sales", variables()).subject
    assert subject == "Thanks Bcc: victim@example.test Quote for 40 units"


@pytest.mark.parametrize("name", ["missing", "../templates/sales", "sales.txt", "Sales", ""])
def test_unknown_or_invalid_names_raise(tdir: Path, name: str) -> None:
    """An outcome without NAME.txt, or a name that is not a plain token, is a TemplateError."""
    with pytest.raises(TemplateError):
        TemplateRenderer(tdir).render(name, variables())


def test_unknown_variable_is_an_error_with_file_and_line(tdir: Path) -> None:
    """StrictUndefined: a misspelt variable fails instead of rendering as an empty string."""
    write(tdir, "sales.txt", "Hello\n{{ contact.nmae }}\n")
    with pytest.raises(TemplateError, match=r"sales\.txt:2: undefined: .*nmae"):
        TemplateRenderer(tdir).render("sales", variables())


# --- the sandbox ----------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ contact.__class__.__init__.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ range.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ '{0.__class__}'.format(contact) }}",
    "{{ contact.name.__class__.__base__.__subclasses__() }}",
    "{% import os %}",
    "{% import 'os' as os %}{{ os.system('id') }}",
    "{% from 'os' import system %}{{ system('id') }}",
    "{% include '/etc/passwd' %}",
    "{% include '../../../../../../etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{% set d = {} %}{{ d.update(a=1) }}",
    "{{ 'x' * 100000000 }}",
    "{{ 9 ** 99999999 }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(99999) %}{% for j in range(99999) %}xxxxxxxx{% endfor %}{% endfor %}",
    "{{ config }}",
    "{{ request }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_fail_safely(tdir: Path, source: str) -> None:
    """Attempts to reach Python internals, files, modules or unbounded work raise TemplateError."""
    write(tdir, "sales.txt", source + "\n")
    with pytest.raises(TemplateError):
        TemplateRenderer(tdir).render("sales", variables())


def test_message_data_is_never_evaluated_as_a_template(tdir: Path) -> None:
    """Jinja syntax in a sender's name or subject is printed as text, not run."""
    sneaky = variables(
        contact=TemplateContact(name="{{ ''.__class__ }}"), original_subject="{% include 'x' %}"
    )
    rendered = TemplateRenderer(tdir).render("sales", sneaky)
    assert rendered.text == "Hello {{ ''.__class__ }}\n"
    assert rendered.subject == "{% include 'x' %}"


def test_includes_inside_the_directory_work(tdir: Path) -> None:
    """Partials (`_footer.txt`) in the templates directory can be included."""
    write(tdir, "_footer.txt", "-- {{ signature }}")
    write(tdir, "sales.txt", "Hi\n{% include '_footer.txt' %}\n")
    assert TemplateRenderer(tdir).render("sales", variables()).text == "Hi\n-- The Example team\n"


# --- live edits -----------------------------------------------------------------------------------


def test_an_edit_applies_to_the_next_render(tdir: Path) -> None:
    """Admins edit templates while the daemon runs; no restart is needed."""
    renderer = TemplateRenderer(tdir)
    assert renderer.render("sales", variables()).text == "Hello Jane Doe\n"
    write(tdir, "sales.txt", "Good day {{ contact.name }}\n")
    assert renderer.render("sales", variables()).text == "Good day Jane Doe\n"
    write(tdir, "sales.de.txt", "Hallo\n")
    assert renderer.render("sales", variables(), "de").text == "Hallo\n"
    (tdir / "sales.de.txt").unlink()
    assert renderer.render("sales", variables(), "de").text == "Good day Jane Doe\n"


def test_a_broken_edit_keeps_the_last_good_version_and_logs_once(
    tdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A syntax error in an edit: replies keep using the previous version; one warning, not one
    per message; the fix applies at once."""
    renderer = TemplateRenderer(tdir)
    renderer.render("sales", variables())
    write(tdir, "sales.txt", "Hello {{ contact.name \n")
    with caplog.at_level(logging.WARNING, logger="triage.act.replies"):
        for _ in range(3):
            assert renderer.render("sales", variables()).text == "Hello Jane Doe\n"
    broken = [r for r in caplog.records if "sales.txt" in r.getMessage()]
    assert len(broken) == 1
    assert "sales.txt:1" in broken[0].getMessage()
    write(tdir, "sales.txt", "Fixed {{ contact.name }}\n")
    assert renderer.render("sales", variables()).text == "Fixed Jane Doe\n"


def test_an_edit_that_fails_to_render_keeps_the_last_good_version(
    tdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An edit that compiles but fails at render time (unknown variable) also falls back."""
    renderer = TemplateRenderer(tdir)
    renderer.render("sales", variables())
    write(tdir, "sales.txt", "Hello {{ contact.surname }}\n")
    with caplog.at_level(logging.WARNING, logger="triage.act.replies"):
        for _ in range(3):
            assert renderer.render("sales", variables()).text == "Hello Jane Doe\n"
    warnings = [r for r in caplog.records if "sales.txt" in r.getMessage()]
    assert len(warnings) == 1
    assert "surname" in warnings[0].getMessage()


def test_a_template_broken_from_the_start_raises(tdir: Path) -> None:
    """Without a version that ever worked there is nothing to fall back to."""
    write(tdir, "sales.txt", "{% if %}\n")
    with pytest.raises(TemplateError, match=r"sales\.txt:1"):
        TemplateRenderer(tdir).render("sales", variables())


# --- check ----------------------------------------------------------------------------------------


def problems_of(tdir: Path) -> list[str]:
    return [str(p) for p in TemplateRenderer(tdir).check(variables())]


def test_check_reports_syntax_errors_with_file_and_line(tdir: Path) -> None:
    """`triage templates check` points at the line of a syntax error."""
    write(tdir, "sales.txt", "Hello\n\n{% if contact.name %}no end\n")
    [problem] = problems_of(tdir)
    assert problem.startswith(f"{tdir / 'sales.txt'}:")
    assert "syntax error" in problem


def test_check_reports_unknown_variables_with_their_line(tdir: Path) -> None:
    """A variable that is not documented is reported, with the line it is used on."""
    write(tdir, "sales.txt", "Hello\n{{ customer_name }}\n{{ contact.phone }}\n")
    assert problems_of(tdir) == [
        f"{tdir / 'sales.txt'}:2: unknown variable 'customer_name'",
        f"{tdir / 'sales.txt'}:3: unknown variable 'contact.phone'",
    ]


def test_check_reports_render_errors(tdir: Path) -> None:
    """Errors only rendering shows (a sandbox violation) are reported with their line."""
    write(tdir, "sales.txt", "ok\n{{ contact.name.__class__ }}\n")
    [problem] = problems_of(tdir)
    assert problem.startswith(f"{tdir / 'sales.txt'}:2: ")


def test_check_reports_stray_files(tdir: Path) -> None:
    """Files that would never be used are reported: bad names, parts without a text body,
    variants without a base."""
    write(tdir, "Sales.TXT.txt", "x")
    write(tdir, "marketing.html", "<p>x</p>")
    write(tdir, "offer.de.txt", "x")
    assert set(problems_of(tdir)) == {
        f"{tdir / 'Sales.TXT.txt'}: file name is not NAME[.LANG].subject|txt|html",
        f"{tdir / 'marketing.html'}: unused: there is no marketing.txt",
        f"{tdir / 'offer.de.txt'}: language variant without a base offer.txt to fall back to",
    }


def test_check_ignores_the_live_fallback(tdir: Path) -> None:
    """`check` reports a broken file even when the running renderer still has a good version."""
    renderer = TemplateRenderer(tdir)
    renderer.render("sales", variables())
    write(tdir, "sales.txt", "{{ oops }\n")
    assert len(renderer.check(variables())) == 1


def test_check_of_an_empty_or_missing_directory(tmp_path: Path) -> None:
    """No templates at all is a problem; a missing directory is a TemplateError."""
    assert [p.message for p in TemplateRenderer(tmp_path).check(variables())] == [
        "no template files found"
    ]
    with pytest.raises(TemplateError):
        TemplateRenderer(tmp_path / "nope").check(variables())


def test_problem_formats_like_a_compiler() -> None:
    """file:line: message, or file: message without a line."""
    assert str(Problem("a.txt", 3, "bad")) == "a.txt:3: bad"
    assert str(Problem("a.txt", None, "bad")) == "a.txt: bad"


# --- variables ------------------------------------------------------------------------------------


def test_variables_from_a_message_are_single_line() -> None:
    """CR/LF in a sender's name or subject becomes a space before any template sees it."""
    msg = InboundMessage(
        message_id="<m@x.example>",
        subject="Quote\r\nBcc: victim@example.test",
        from_=Address("Eve\r\nBcc: victim@example.test", "eve@x.example"),
        contact=Contact(name="Eve\r\nBcc: victim@example.test", company="A\nB"),
        language="de",
    )
    dest = Address("Eve", "eve@x.example")
    v = ReplyVariables.for_message(msg, SETTINGS, destination=dest, lead_owner="Sam", trusted=True)
    assert v.contact.name == "Eve Bcc: victim@example.test"
    assert v.contact.company == "A B"
    assert v.contact.email == "eve@x.example"
    assert v.original_subject == "Quote Bcc: victim@example.test"
    assert v.language == "de"
    assert v.lead_owner == "Sam"
    assert v.company_name == "Example Ltd"


def test_contact_name_falls_back_to_the_destination() -> None:
    """Without a parsed contact name the reply greets the addressee by name."""
    msg = InboundMessage(message_id="<m@x.example>", from_=Address("Pat", "pat@x.example"))
    v = ReplyVariables.for_message(
        msg, SETTINGS, destination=Address("Pat", "pat@x.example"), trusted=True
    )
    assert v.contact.name == "Pat"
    assert v.contact.first_name == "Pat"
    assert v.language == "en"
    assert TemplateContact().first_name == ""


def test_one_line() -> None:
    """Control characters and runs of white space collapse to single spaces."""
    assert one_line(" a\r\n\tb\x00c\u2028d  ") == "a b c d"
    assert one_line("x" * 500) == "x" * 200


def test_renderer_copes_with_a_copied_directory(tmp_path: Path) -> None:
    """The shipped set works from anywhere (the daemon's working directory is not the repo)."""
    copy = tmp_path / "t"
    shutil.copytree(REPO_TEMPLATES, copy)
    assert TemplateRenderer(copy).render("marketing", variables(), "fr").language == "fr"
