"""Reply templates: find the right file for an outcome and language, and render it in a sandbox.

A template set for outcome NAME is `NAME.subject` (optional), `NAME.txt` (required) and `NAME.html`
(optional, autoescaped); a language variant adds the language: `NAME.de.txt`. Templates are Jinja2
in an `ImmutableSandboxedEnvironment` with `StrictUndefined`, so a template can only read the
documented variables (see `templates/README.md`) and a typo is an error, not an empty string.

Admins edit templates while the daemon runs. Every render checks the files' mtimes, so an edit
applies to the next reply. An edit that does not compile or render is logged once and the last
version that worked keeps being used until the file is fixed.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from triage.errors import TemplateError
from triage.models import Address, InboundMessage
from triage.settings import RepliesSettings

log = logging.getLogger(__name__)

PARTS = ("subject", "txt", "html")
# Outcome names and languages are plain tokens: no dots, no slashes, nothing to traverse with.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
LANG_RE = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{2,8})?$")
_FILE_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_-]*)(?:\.(?P<lang>[a-z]{2,3}(?:-[a-z0-9]{2,8})?))?"
    r"\.(?P<part>subject|txt|html)$"
)
DEFAULT_SUBJECT = '{{ original_subject or "Your message to " ~ company_name }}'
MAX_OUTPUT = 200_000  # characters per rendered part: a runaway loop must not build a huge mail
MAX_SINGLE_LINE = 200  # characters kept of a one-line variable (name, company, subject)
# What a template may raise while rendering; anything else is a bug in triage, not in the template.
_RENDER_ERRORS = (
    jinja2.TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def one_line(value: str, limit: int = MAX_SINGLE_LINE) -> str:
    """`value` with every control character (CR, LF, TAB …) replaced by a space, trimmed.

    Variables that come from a message may end up in a header; a line break there could forge one.
    """
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


@dataclass(frozen=True, slots=True)
class TemplateContact:
    """The prospect as templates see it: `contact.name`, `contact.company`, `contact.email`."""

    name: str = ""
    company: str = ""
    email: str = ""

    @property
    def first_name(self) -> str:
        """The first word of the name ("" when there is no name), for informal greetings."""
        return self.name.split()[0] if self.name.split() else ""


@dataclass(frozen=True, slots=True)
class ReplyVariables:
    """Every variable a reply template can use; documented in `templates/README.md`."""

    contact: TemplateContact = field(default_factory=TemplateContact)
    original_subject: str = ""
    company_name: str = ""
    signature: str = ""
    lead_owner: str = ""
    business_hours_promise: str = ""
    language: str = ""

    @classmethod
    def for_message(
        cls,
        msg: InboundMessage,
        replies: RepliesSettings,
        *,
        destination: Address | None = None,
        lead_owner: str = "",
    ) -> ReplyVariables:
        """The variables for a reply to `msg`; values from the message are made single-line."""
        name = msg.contact.name or (destination.name if destination else "")
        if not name and msg.from_ is not None and destination is not None:
            name = msg.from_.name if msg.from_.email == destination.email else ""
        email = destination.email if destination else msg.contact.email
        return cls(
            contact=TemplateContact(
                name=one_line(name), company=one_line(msg.contact.company), email=one_line(email)
            ),
            original_subject=one_line(msg.subject, 998),
            company_name=replies.company_name,
            signature=replies.signature,
            lead_owner=one_line(lead_owner),
            business_hours_promise=replies.business_hours_promise,
            language=msg.language or replies.default_language,
        )

    @classmethod
    def sample(cls, replies: RepliesSettings) -> ReplyVariables:
        """Plausible values for `triage templates check` and `preview`."""
        return cls(
            contact=TemplateContact(
                name="Jane Doe", company="Doe Logistics GmbH", email="jane@doe-logistics.example"
            ),
            original_subject="Quote for 40 units",
            company_name=replies.company_name,
            signature=replies.signature,
            lead_owner="Sam Seller",
            business_hours_promise=replies.business_hours_promise,
            language=replies.default_language,
        )

    def as_context(self) -> dict[str, Any]:
        """The template context: top-level names, `contact` as an object with attributes."""
        data = {f: getattr(self, f) for f in type(self).__dataclass_fields__}
        data["contact"] = self.contact
        return data


VARIABLES: frozenset[str] = frozenset(ReplyVariables.__dataclass_fields__)
CONTACT_FIELDS: tuple[str, ...] = (*(asdict(TemplateContact()).keys()), "first_name")


@dataclass(frozen=True, slots=True)
class RenderedReply:
    """The rendered parts of one reply; `language` is the variant used ("" for the base files)."""

    template: str
    language: str
    subject: str
    text: str
    html: str | None = None
    files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a template file, as `triage templates check` prints it."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus limits on `*` and `**`, so `{{ 'x' * 10**12 }}` cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("exponent too large in a template")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_OUTPUT:
                    raise SecurityError("repetition too large in a template")
        return super().call_binop(context, operator, left, right)


class _LastGoodLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that keeps the last template that compiled when a newer edit does not.

    Jinja reloads a template whose mtime changed (`auto_reload`); when the new source has a syntax
    error this loader reports it once and returns the previous compiled template instead.
    """

    def __init__(self, directory: Path, report: Callable[[str, str], None]) -> None:
        super().__init__(str(directory), followlinks=False)
        self._good: dict[str, jinja2.Template] = {}
        self._report = report

    def load(
        self,
        environment: jinja2.Environment,
        name: str,
        globals: MutableMapping[str, Any] | None = None,
    ) -> jinja2.Template:
        try:
            template = super().load(environment, name, globals)
        except jinja2.TemplateSyntaxError as exc:
            good = self._good.get(name)
            if good is None:
                raise
            self._report(name, f"{_where(exc)}: {exc.message}; still using the previous version")
            return good
        self._good[name] = template
        return template


def _where(exc: jinja2.TemplateSyntaxError) -> str:
    return f"{exc.filename or exc.name}:{exc.lineno}"


def make_environment(
    directory: Path, report: Callable[[str, str], None] | None = None
) -> jinja2.Environment:
    """The sandboxed environment over `directory`: strict variables, HTML autoescaped."""
    env = _Sandbox(
        loader=_LastGoodLoader(directory, report or (lambda name, message: None)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        auto_reload=True,
        keep_trailing_newline=True,
    )
    # Keep only harmless helpers; templates need no cycler/joiner/namespace objects.
    for name in ("cycler", "joiner", "namespace", "lipsum"):
        env.globals.pop(name, None)
    return env


@dataclass(frozen=True, slots=True)
class _Choice:
    language: str
    subject: str | None
    text: str
    html: str | None


class TemplateRenderer:
    """Finds and renders reply templates from one directory; safe to keep for the process life."""

    def __init__(self, directory: Path, default_language: str = "en") -> None:
        self.directory = Path(directory)
        self.default_language = default_language.lower()
        self._reported: set[tuple[str, str]] = set()
        self._rendered_ok: dict[str, jinja2.Template] = {}
        self._env = make_environment(self.directory, self._report_once)

    @classmethod
    def from_settings(cls, replies: RepliesSettings) -> TemplateRenderer:
        """The renderer configured by `[replies] templates_dir` and `default_language`."""
        return cls(replies.templates_dir, replies.default_language)

    # --- finding files ---------------------------------------------------------------------------

    def files(self) -> list[str]:
        """Every template file name in the directory (sorted), partials included."""
        try:
            entries = sorted(p.name for p in self.directory.iterdir() if p.is_file())
        except OSError as exc:
            raise TemplateError(
                f"cannot read templates directory {self.directory}: {exc}"
            ) from None
        return [e for e in entries if e.endswith((".subject", ".txt", ".html"))]

    def outcomes(self) -> dict[str, list[str]]:
        """Outcome name → languages with a variant (`""` is the base set), for every `NAME.txt`."""
        found: dict[str, list[str]] = {}
        for entry in self.files():
            m = _FILE_RE.match(entry)
            if m and m["part"] == "txt":
                found.setdefault(m["name"], []).append(m["lang"] or "")
        return {name: sorted(langs) for name, langs in sorted(found.items())}

    def _exists(self, filename: str) -> bool:
        return (self.directory / filename).is_file()

    def choose(self, name: str, language: str = "") -> _Choice:
        """The files used for outcome `name` in `language`, falling back to the base set.

        A variant is used when `NAME.LANG.txt` exists; its subject falls back to `NAME.subject`, but
        its HTML does not fall back (a German text with an English HTML part would be worse than
        a German text alone).
        """
        if not NAME_RE.match(name):
            raise TemplateError(f"invalid template name {name!r}")
        for lang in self._candidates(language):
            text = f"{name}.{lang}.txt" if lang else f"{name}.txt"
            if not self._exists(text):
                continue
            subject = f"{name}.{lang}.subject" if lang else f"{name}.subject"
            if lang and not self._exists(subject):
                subject = f"{name}.subject"
            html = f"{name}.{lang}.html" if lang else f"{name}.html"
            return _Choice(
                language=lang,
                subject=subject if self._exists(subject) else None,
                text=text,
                html=html if self._exists(html) else None,
            )
        raise TemplateError(f"no template {name}.txt in {self.directory}")

    def _candidates(self, language: str) -> Iterator[str]:
        lang = language.strip().lower().replace("_", "-")
        if LANG_RE.match(lang):
            if lang != self.default_language:
                yield lang
            base = lang.split("-", 1)[0]
            if base not in (lang, self.default_language):
                yield base
        yield ""

    # --- rendering -------------------------------------------------------------------------------

    def render(self, name: str, variables: ReplyVariables, language: str = "") -> RenderedReply:
        """Render outcome `name` for `language` (default: `variables.language`).

        Raises TemplateError when a needed file is missing or no version of it ever rendered.
        """
        choice = self.choose(name, language or variables.language)
        context = variables.as_context()
        if choice.subject is not None:
            subject = self._render_file(choice.subject, context)
        else:
            subject = self._render_source(DEFAULT_SUBJECT, context)
        text = self._render_file(choice.text, context)
        html = self._render_file(choice.html, context) if choice.html else None
        files = tuple(f for f in (choice.subject, choice.text, choice.html) if f)
        return RenderedReply(
            template=name,
            language=choice.language,
            subject=one_line(subject, 998),
            text=text,
            html=html,
            files=files,
        )

    def _render_file(self, filename: str, context: Mapping[str, Any]) -> str:
        try:
            template = self._env.get_template(filename)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{self._path(exc)}: {exc.message}") from None
        except jinja2.TemplateNotFound:
            raise TemplateError(f"template {self.directory / filename} disappeared") from None
        except OSError as exc:
            raise TemplateError(
                f"cannot read template {self.directory / filename}: {exc}"
            ) from None
        try:
            output = _render(template, context)
        except _RENDER_ERRORS as exc:
            message = f"{render_error_location(exc, self.directory, filename)}: {describe(exc)}"
            good = self._rendered_ok.get(filename)
            if good is None or good is template:
                raise TemplateError(message) from None
            self._report_once(filename, f"{message}; still using the previous version")
            try:
                return _render(good, context)
            except _RENDER_ERRORS as again:
                raise TemplateError(f"{message} (and the previous version: {again})") from None
        self._rendered_ok[filename] = template
        return output

    def _render_source(self, source: str, context: Mapping[str, Any]) -> str:
        try:
            return _render(self._env.from_string(source), context)
        except _RENDER_ERRORS as exc:
            raise TemplateError(f"default subject: {describe(exc)}") from None

    def _path(self, exc: jinja2.TemplateSyntaxError) -> str:
        return f"{exc.filename or self.directory / (exc.name or '?')}:{exc.lineno}"

    def _report_once(self, filename: str, message: str) -> None:
        # One log line per broken edit (keyed by the file's mtime), not one per message.
        try:
            stamp = str(os.stat(self.directory / filename).st_mtime_ns)
        except OSError:
            stamp = "gone"
        if (filename, stamp) in self._reported:
            return
        self._reported.add((filename, stamp))
        log.warning("template %s is broken: %s", filename, message)

    # --- checking --------------------------------------------------------------------------------

    def check(self, variables: ReplyVariables) -> list[Problem]:
        """Every problem in the directory: bad names, syntax errors, unknown variables, render
        errors against `variables`, language variants without a base. Empty when all is well."""
        problems: list[Problem] = []
        files = self.files()
        if not files:
            return [Problem(str(self.directory), None, "no template files found")]
        strict = make_environment(self.directory)  # no last-good fallback: report the file as is
        for entry in files:
            problems.extend(self._check_file(strict, entry, variables))
        problems.extend(self._check_sets(files))
        return problems

    def _check_file(
        self, env: jinja2.Environment, entry: str, variables: ReplyVariables
    ) -> list[Problem]:
        path = str(self.directory / entry)
        partial = entry.startswith("_")
        if not partial and not _FILE_RE.match(entry):
            return [Problem(path, None, "file name is not NAME[.LANG].subject|txt|html")]
        try:
            source = (self.directory / entry).read_text(encoding="utf-8")
            ast = env.parse(source, entry, path)
        except UnicodeDecodeError as exc:
            return [Problem(path, None, f"not UTF-8 text: {exc.reason}")]
        except OSError as exc:
            return [Problem(path, None, f"cannot read: {exc.strerror}")]
        except jinja2.TemplateSyntaxError as exc:
            return [Problem(path, exc.lineno, f"syntax error: {exc.message}")]
        problems = [
            Problem(path, line, f"unknown variable {var!r}")
            for var, line in unknown_variables(ast, env)
        ]
        if problems or partial:
            return problems
        try:
            _render(env.get_template(entry), variables.as_context())
        except _RENDER_ERRORS as exc:
            line = _render_error_line(exc, path)
            problems.append(Problem(path, line, describe(exc)))
        return problems

    def _check_sets(self, files: list[str]) -> list[Problem]:
        problems = []
        present = set(files)
        for entry in files:
            m = _FILE_RE.match(entry)
            if not m:
                continue
            name, lang, part = m["name"], m["lang"], m["part"]
            own_text = f"{name}.{lang}.txt" if lang else f"{name}.txt"
            if part != "txt" and own_text not in present:
                problems.append(
                    Problem(str(self.directory / entry), None, f"unused: there is no {own_text}")
                )
            if lang and part == "txt" and f"{name}.txt" not in present:
                problems.append(
                    Problem(
                        str(self.directory / entry),
                        None,
                        f"language variant without a base {name}.txt to fall back to",
                    )
                )
        return problems


def _render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    # Streamed, so a runaway loop stops at the limit instead of building the whole output first.
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise ValueError(f"rendered output is longer than {MAX_OUTPUT} characters")
        chunks.append(chunk)
    return "".join(chunks)


def describe(exc: BaseException) -> str:
    """A one-line description of a render error for the operator."""
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"included template not found: {exc.name}"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error in {exc.name}:{exc.lineno}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _render_error_line(exc: BaseException, path: str) -> int | None:
    # Jinja rewrites tracebacks so that template frames carry the template's file and line.
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return line


def render_error_location(exc: BaseException, directory: Path, filename: str) -> str:
    """`path:line` of a render error inside `filename` (just `path` when the line is unknown)."""
    path = str(directory / filename)
    line = _render_error_line(exc, path)
    return f"{path}:{line}" if line else path


def unknown_variables(ast: nodes.Template, env: jinja2.Environment) -> list[tuple[str, int]]:
    """(name, line) of every variable the template reads that is neither documented nor its own."""
    undeclared = meta.find_undeclared_variables(ast) - VARIABLES - set(env.globals)
    found: list[tuple[str, int]] = []
    for name in ast.find_all(nodes.Name):
        if name.name in undeclared and name.ctx == "load":
            found.append((name.name, name.lineno))
            undeclared.discard(name.name)
    for node in ast.find_all(nodes.Getattr):
        target = node.node
        contact = isinstance(target, nodes.Name) and target.name == "contact"
        if contact and node.attr not in CONTACT_FIELDS:
            found.append((f"contact.{node.attr}", node.lineno))
    return sorted(found, key=lambda item: item[1])
