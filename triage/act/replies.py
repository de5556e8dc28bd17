"""Reply templates: find the right file for an outcome and language, and render it in a sandbox.

A template set for outcome NAME is `NAME.subject` (optional), `NAME.txt` (required) and `NAME.html`
(optional; everything it outputs is autoescaped, partials it includes too); a language variant
adds the language: `NAME.de.txt`. Templates are Jinja2 in an `ImmutableSandboxedEnvironment` with
`StrictUndefined`, so a template can only read the documented variables (see
`templates/README.md`) and a typo is an error, not an empty string.

Templates are treated as untrusted too: whoever edits them must not reach other files or exhaust
the daemon. A template loads only files whose real path lies inside the templates directory, no
value it builds may exceed MAX_OUTPUT characters (refused before it is built), and each part
renders for at most RENDER_TIMEOUT seconds.

Admins edit templates while the daemon runs. Every render checks the files' mtimes, so an edit
applies to the next reply. An edit that does not compile or render is logged once and the last
version that worked keeps being used until the file is fixed.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
import stat
import sys
import time
import traceback
import types
import weakref
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    Sequence,
    ValuesView,
)
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import jinja2
from jinja2 import filters as jinja_filters
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.loaders import split_template_path
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from markupsafe import EscapeFormatter, Markup, escape, soft_str

from triage.core.errors import TemplateError
from triage.core.models import Address, InboundMessage
from triage.core.sanitize import one_line, shown
from triage.core.settings import RepliesSettings

log = logging.getLogger(__name__)

# Outcome names and languages are plain tokens: no dots, no slashes, nothing to traverse with.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
LANG_RE = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{2,8})?$")
_FILE_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_-]*)(?:\.(?P<lang>[a-z]{2,3}(?:-[a-z0-9]{2,8})?))?"
    r"\.(?P<part>subject|txt|html)$"
)
DEFAULT_SUBJECT = '{{ original_subject or "Your message to " ~ company_name }}'
MAX_OUTPUT = 200_000  # characters per rendered part: a runaway loop must not build a huge mail
MAX_INT_BITS = 4096  # size of a number a template may compute (10**1233)
RENDER_TIMEOUT = 2.0  # seconds one part may take to render; a reply normally takes milliseconds
# What a template may raise while rendering; anything else is a bug in triage, not in the template.
_RENDER_ERRORS = (
    jinja2.TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)
_T = TypeVar("_T")


def parse_file_name(filename: str) -> tuple[str, str, str] | None:
    """(outcome, language or "", part) of a template file named NAME[.LANG].subject|txt|html,
    or None for any other name."""
    m = _FILE_RE.match(filename)
    return (m["name"], m["lang"] or "", m["part"]) if m else None


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
    # True when our own server authenticated the sender and the reply goes to that sender: only
    # then do `contact.name`, `contact.company` and `original_subject` hold what the message
    # said. Otherwise they are empty, so that no template can repeat a stranger's text to
    # whatever address the stranger chose.
    trusted: bool = False

    @classmethod
    def for_message(
        cls,
        msg: InboundMessage,
        replies: RepliesSettings,
        *,
        destination: Address | None = None,
        lead_owner: str = "",
        trusted: bool = False,
    ) -> ReplyVariables:
        """The variables for a reply to `msg`; values from the message are made single-line and
        visible (no bidi or zero-width characters), and left empty unless `trusted`."""
        email = destination.email if destination else msg.contact.email
        name = company = subject = ""
        if trusted:
            name = msg.contact.name or (destination.name if destination else "")
            if not name and msg.from_ is not None and destination is not None:
                name = msg.from_.name if msg.from_.email == destination.email else ""
            company, subject = msg.contact.company, msg.subject
        return cls(
            contact=TemplateContact(
                name=shown(name),
                company=shown(company),
                email=shown(email),
            ),
            original_subject=shown(subject, 998),
            company_name=replies.company_name,
            signature=replies.signature,
            lead_owner=shown(lead_owner),
            business_hours_promise=replies.business_hours_promise,
            language=msg.language or replies.default_language,
            trusted=trusted,
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
            trusted=True,
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


# --- limits on what a template may build ----------------------------------------------------------
#
# Whoever edits templates must not be able to exhaust the daemon's memory or CPU. Python builds a
# string in one C call (`"x".ljust(10**9)`) and nothing checked after it returns can undo that, so
# every operation that can make a value much larger than its operands is estimated from the
# operands first and refused when the result would pass MAX_OUTPUT. Operations whose result is at
# most a few times their input (upper, escape, tojson, ...) need no estimate: their input is
# bounded already, and string results of filters and calls are checked afterwards, so that growth
# cannot compound either.


def _limit(size: int, what: str) -> None:
    """Refuse an operation whose result would be longer than MAX_OUTPUT, before it is built."""
    if size > MAX_OUTPUT:
        raise SecurityError(f"{what} would be longer than {MAX_OUTPUT} characters")


def _text_size(value: Any, limit: int = MAX_OUTPUT) -> int:
    """About how many characters `value` prints as, found without printing it.

    A container counts each item every time it appears, so `[[s] * 9] * 9` counts `s` 81 times:
    that is what `str()`, `==` or `hash()` walk through, in C, where no time limit can stop them.
    Counting stops once past `limit`.
    """
    if isinstance(value, str | bytes):
        return len(value)
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item) + 2
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset | KeysView | ValuesView | ItemsView):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        else:
            total += 24  # a float, None, a range or an object: a short text
    return total


def _nesting(value: Any) -> int:
    """How deeply containers nest in `value` (1 for a flat list), for indented output."""
    deepest, seen = 0, 0
    stack = [(value, 1)]
    while stack and seen <= MAX_OUTPUT:
        item, depth = stack.pop()
        seen += 1
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _checked(value: _T, what: str) -> _T:
    """`value` returned by a call (`dict(...)`, a method), unless it prints longer than
    MAX_OUTPUT."""
    if isinstance(value, str | bytes):
        _limit(len(value), what)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        _limit(_text_size(value), what)
    return value


def _estimate(size: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """`size(...)`, or 0 when the arguments are wrong: the operation then raises its own error."""
    try:
        return size(*args, **kwargs)
    except (TypeError, ValueError, LookupError, AttributeError, OverflowError):
        return 0


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else MAX_OUTPUT + 1


def _spec_width(spec: str) -> int:
    """The largest width or precision in a format spec such as `>150000000` or `.3f`."""
    return max((_number(run) for run in re.findall(r"\d+", spec)), default=0)


_PERCENT_SPEC = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*"
    r"(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<kind>.)",
    re.DOTALL,
)


def _percent_size(fmt: str, values: Any) -> int:
    """An upper bound of `len(fmt % values)`: every field at its width, precision and text."""
    positional = iter(values if isinstance(values, tuple) else (values,))
    size = len(fmt)
    for spec in _PERCENT_SPEC.finditer(fmt):
        if spec["kind"] == "%":
            continue
        for part in (spec["width"], spec["precision"]):
            if part == "*":
                size += abs(operator.index(next(positional, 0)))
            elif part:
                size += _number(part)
        if spec["key"] is not None:
            value = values[spec["key"]] if isinstance(values, Mapping) else None
        else:
            value = next(positional, None)
        size += _text_size(value)
        if size > MAX_OUTPUT:
            break
    return size


def _padded_size(s: str | bytes, width: Any, *_: Any) -> int:
    return max(len(s), operator.index(width))


def _tabs_size(s: str | bytes, tabsize: Any = 8) -> int:
    tab = "\t" if isinstance(s, str) else b"\t"
    return len(s) + s.count(tab) * max(operator.index(tabsize), 0)  # type: ignore[arg-type]


def _replace_size(s: Any, old: Any, new: Any, count: Any = -1) -> int:
    if isinstance(s, Markup):  # Markup.replace escapes its arguments first
        old, new = escape(old), escape(new)
    grow = len(new) - len(old)
    if grow <= 0:
        return len(s)
    hits = s.count(old) if old else len(s) + 1
    if operator.index(count) >= 0:
        hits = min(hits, operator.index(count))
    return len(s) + hits * grow


def _translate_size(s: str | bytes, table: Any, *_: Any) -> int:
    items = table.values() if isinstance(table, Mapping) else table
    longest = max((len(item) for item in items if isinstance(item, str | bytes)), default=1)
    return len(s) * max(longest, 1)


def _join_size(separator: Any, items: list[Any]) -> int:
    size = _text_size(separator) * max(len(items) - 1, 0)
    for item in items:
        size += _text_size(item)
        if size > MAX_OUTPUT:
            break
    return size


# Methods of str and bytes whose result can be much longer than the string itself.
_METHOD_SIZES: dict[str, Callable[..., int]] = {
    "ljust": _padded_size,
    "rjust": _padded_size,
    "center": _padded_size,
    "zfill": _padded_size,
    "expandtabs": _tabs_size,
    "replace": _replace_size,
    "translate": _translate_size,
    "join": _join_size,
}


# Each takes what Jinja passes a filter first (its environment or eval context; None when it gets
# neither), then the filter's own arguments.


def _center_size(_: object, value: Any, width: Any = 80) -> int:
    return _padded_size(soft_str(value), width)


def _indent_size(
    _: object, s: Any, width: Any = 4, first: bool = False, blank: bool = False
) -> int:
    text = soft_str(s)
    step = len(width) if isinstance(width, str) else max(operator.index(width), 0)
    return len(text) + (text.count("\n") + 2) * step


def _wordwrap_size(
    environment: jinja2.Environment,
    s: Any,
    width: Any = 79,
    break_long_words: bool = True,
    wrapstring: Any = None,
    break_on_hyphens: bool = True,
) -> int:
    text = soft_str(s)
    separator = environment.newline_sequence if wrapstring is None else str(wrapstring)
    lines = len(text.split()) + len(text) // max(operator.index(width), 1) + text.count("\n") + 1
    return len(text) + min(lines, len(text) + 1) * len(separator)


def _replace_filter_size(
    eval_ctx: jinja2.nodes.EvalContext, s: Any, old: Any, new: Any, count: Any = None
) -> int:
    # The same conversions as the filter, so the count is of what it will really replace.
    if not eval_ctx.autoescape:
        return _replace_size(str(s), str(old), str(new), -1 if count is None else count)
    html = hasattr(old, "__html__") or (hasattr(new, "__html__") and not hasattr(s, "__html__"))
    text = escape(s) if html else soft_str(s)
    return _replace_size(text, soft_str(old), soft_str(new), -1 if count is None else count)


def _format_size(_: object, value: Any, *args: Any, **kwargs: Any) -> int:
    return _percent_size(soft_str(value), kwargs or args)


def _urlize_size(
    eval_ctx: jinja2.nodes.EvalContext,
    value: Any,
    trim_url_limit: Any = None,
    nofollow: bool = False,
    target: Any = None,
    rel: Any = None,
    extra_schemes: Any = None,
) -> int:
    text = soft_str(value)
    per_link = len(soft_str(target or "")) + len(soft_str(rel or ""))
    return len(text) + (len(text.split()) + 1) * per_link


def _tojson_size(eval_ctx: jinja2.nodes.EvalContext, value: Any, indent: Any = None) -> int:
    step = len(indent) if isinstance(indent, str) else operator.index(indent or 0)
    size = _text_size(value)
    return size if size > MAX_OUTPUT else size * (1 + max(step, 0) * _nesting(value))


def _batch_size(_: object, value: Any, linecount: Any, fill_with: Any = None) -> int:
    return 0 if fill_with is None else operator.index(linecount)


def _slice_size(_: object, value: Any, slices: Any, fill_with: Any = None) -> int:
    return operator.index(slices)


# Filters whose result can be much longer than their input, by the arguments they are given.
_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": _center_size,
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "replace": _replace_filter_size,
    "format": _format_size,
    "urlize": _urlize_size,
    "tojson": _tojson_size,
    "batch": _batch_size,
    "slice": _slice_size,
}


@jinja2.pass_eval_context
def _join_filter(
    eval_ctx: jinja2.nodes.EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None
) -> str:
    """`join`, measuring the parts before joining them."""
    items = list(value)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(eval_ctx.environment, attribute), items))
    _limit(_join_size(d, items), "the join filter")
    return jinja_filters.sync_do_join(eval_ctx, items, d)


@jinja2.pass_environment
def _sum_filter(
    environment: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    """`sum`, measuring the result first when it adds up lists (`start=[]`)."""
    items = list(iterable)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(environment, attribute), items))
    if isinstance(start, list | tuple | str | bytes):
        _limit(_join_size("", [start, *items]), "the sum filter")
    return jinja_filters.sync_do_sum(environment, items, start=start)


_FILTER_REPLACEMENTS: dict[str, Callable[..., Any]] = {"join": _join_filter, "sum": _sum_filter}


def _guarded_filter(
    name: str, func: Callable[..., Any], size: Callable[..., int] | None
) -> Callable[..., Any]:
    """`func` (a filter), refused before it runs when `size` of its arguments is too large, and
    after it runs when it returned text longer than MAX_OUTPUT."""
    what = f"the {name} filter"
    passes = hasattr(func, "jinja_pass_arg")  # Jinja's mark: an environment or context first

    @functools.wraps(func)  # keeps that mark, so Jinja passes the same first argument
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if size is not None:
            first, rest = (args[0], args[1:]) if passes else (None, args)
            _limit(_estimate(size, first, *rest, **kwargs), what)
        result = func(*args, **kwargs)
        if isinstance(result, str | bytes):
            _limit(len(result), what)
        return result

    return guarded


class _Formatter(SandboxedFormatter):
    """The sandbox's `str.format`: each field is measured before it is formatted."""

    _size = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._size = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        # The spec is complete here, nested fields (`{:>{}}`) included.
        _limit(self._size + max(_spec_width(format_spec), _text_size(value)), "str.format()")
        text = super().format_field(value, format_spec)
        self._size += len(text)
        return text


class _EscapeFormatter(_Formatter, EscapeFormatter):
    """`Markup.format` (the HTML part): measured like `str.format`, then escaped."""


# --- limits on time -------------------------------------------------------------------------------
#
# Jinja cannot be interrupted from outside the rendering thread, and SIGALRM reaches only the main
# thread while replies are rendered in account threads. So a render installs a trace function
# (`sys.settrace`, which applies to the calling thread only) that checks the clock at every call
# of a Python function and at every line of template code, and raises once the time is up. A
# bounded `range` alone would not do: nested loops multiply. Tracing costs only while a template
# renders (about 0.5 ms more per reply) and a trace function already in place (a debugger,
# coverage) is chained, then restored. What it cannot stop is one long C call, which is why the
# size limits above keep every single call small.


class RenderTimeout(jinja2.TemplateRuntimeError):
    """Raised when rendering a template takes longer than its time limit."""


class _Expired(BaseException):
    # A BaseException, so that no `except Exception` in Jinja, a filter or the standard library
    # swallows it. Python removes a trace function that raised, so a swallowed one would leave
    # the rest of the render unbounded.
    pass


_Tracer = Callable[[FrameType, str, Any], Any]


class _Deadline:
    """The trace function of one render: raises _Expired once `deadline` has passed."""

    def __init__(self, deadline: float, previous: Callable[..., Any] | None) -> None:
        self.deadline = deadline
        self.previous = previous
        self.where = ""

    def __call__(self, frame: FrameType, event: str, arg: Any) -> _Tracer | None:
        # Every call of a Python function, generators resuming included. The clock is read
        # here rather than through `check`: one Python call fewer per event.
        if _monotonic() > self.deadline:
            self.check(frame)
        if self.previous is not None:
            return self.chained(self.previous(frame, event, arg))
        # Lines are checked in template code only, where a loop can spin without calling
        # anything; that keeps the cost of tracing small.
        return self.local if "__jinja_template__" in frame.f_globals else None

    def local(self, frame: FrameType, event: str, arg: Any) -> _Tracer:
        if _monotonic() > self.deadline:
            self.check(frame)
        return self.local

    def chained(self, inner: _Tracer | None) -> _Tracer:
        """A local trace function that also calls the previous tracer's local one."""

        def local(frame: FrameType, event: str, arg: Any) -> _Tracer:
            nonlocal inner
            self.check(frame)
            if inner is not None:
                inner = inner(frame, event, arg)
            return local

        return local

    def check(self, frame: FrameType) -> None:
        """Raise _Expired once the deadline has passed (not inside a finalizer, see below)."""
        if _monotonic() > self.deadline and not _in_finalizer(frame):
            self.where = _template_position(frame)
            raise _Expired


_monotonic = time.monotonic


# A finalizer (`__del__`, a weakref.finalize callback) may run inside a render when the garbage
# collector frees something. An exception raised there is swallowed ("Exception ignored in …"),
# and an exception from a trace function also switches tracing off for the thread: the render
# would then never be stopped. Past the deadline the tracer waits for the next call outside it.
_FINALIZER_CODES = frozenset({weakref.finalize.__call__.__code__})


def _in_finalizer(frame: FrameType | None) -> bool:
    """True when `frame` or a frame that called it is a finalizer run by the collector."""
    while frame is not None:
        code = frame.f_code
        if code in _FINALIZER_CODES or code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _template_position(frame: FrameType | None) -> str:
    """` (stopped at NAME:LINE)` for the innermost template frame of the stack, or ""."""
    while frame is not None:
        template = frame.f_globals.get("__jinja_template__")
        if isinstance(template, jinja2.Template):
            line = template.get_corresponding_lineno(frame.f_lineno)
            return f" (stopped at {template.name or 'template'}:{line})"
        frame = frame.f_back
    return ""


def _within_time(seconds: float, work: Callable[[], _T]) -> _T:
    """`work()`, stopped with RenderTimeout after `seconds`."""
    previous = sys.gettrace()
    tracer = _Deadline(time.monotonic() + seconds, previous)
    sys.settrace(tracer)
    try:
        return work()
    except _Expired:
        pass  # nothing here may call Python code: the tracer is still installed
    finally:
        sys.settrace(previous)
    raise RenderTimeout(f"rendering took longer than {seconds:g} s{tracer.where}")


def _timeout_of(environment: jinja2.Environment) -> float:
    return float(getattr(environment, "render_timeout", RENDER_TIMEOUT))


class _BoundedTemplate(jinja2.Template):
    """A template whose `render()` has the environment's time limit (the digest renders this
    way). `generate()` is bounded by its consumer instead (see `_render`): a generator runs in
    the frames of whoever iterates it."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        render = super().render
        return _within_time(_timeout_of(self.environment), lambda: render(*args, **kwargs))


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` and list, tuple and dict literals measured by the sandbox.

    Neither is an operator the sandbox can intercept, yet `{% set a = a ~ a ~ a ~ a %}` or
    `{% set l = [l, l, l, l] %}`, repeated a few times, grows a value exponentially.
    """

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        # Jinja evaluates constant expressions of `{{ }}` while compiling, filters on literals
        # included, outside the time limit; only literal text and constants are folded here.
        if not isinstance(node, nodes.TemplateData | nodes.Const):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            markup = "context.eval_ctx.volatile"
        else:
            markup = repr(bool(frame.eval_ctx.autoescape))
        self.write(f"environment.concat_parts({markup}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.sized(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # a target (`{% for a, b in ... %}`), not a value
            super().visit_Tuple(node, frame)
            return
        self.write("environment.sized(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.sized(")
        super().visit_Dict(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus limits on the size of every value a template builds and on render time.

    `{{ 'x' * 10**12 }}`, `"x".ljust(10**9)`, `"%999999999s"|format(x)` and their kin are
    refused before the allocation; renders stop after `render_timeout` seconds.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator
    template_class = _BoundedTemplate

    def __init__(self, *args: Any, render_timeout: float = RENDER_TIMEOUT, **kwargs: Any) -> None:
        # No constant folding: Jinja would run filters on literals while compiling, where neither
        # the time limit nor a useful error location applies.
        kwargs.setdefault("optimized", False)
        super().__init__(*args, **kwargs)
        self.render_timeout = render_timeout
        for name, func in list(self.filters.items()):
            self.filters[name] = _guarded_filter(
                name, _FILTER_REPLACEMENTS.get(name, func), _FILTER_SIZES.get(name)
            )

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large in a template")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                _limit_bits(abs(left).bit_length() * right)
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                _limit_bits(abs(left).bit_length() + abs(right).bit_length())
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, _SEQUENCES) and isinstance(times, int):
                    _limit(_text_size(seq) * times, "repetition")
        elif operator == "+":
            if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                _limit(_text_size(left) + _text_size(right), "'+'")
        elif operator == "%" and isinstance(left, str | bytes):
            fmt = left if isinstance(left, str) else left.decode("latin-1")
            _limit(_estimate(_percent_size, fmt, right), "'%' formatting")
        return super().call_binop(context, operator, left, right)

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str | bytes) and name in _METHOD_SIZES:
            if name == "join" and args:
                args = (list(args[0]), *args[1:])  # measured, then joined: iterate it once
                size = _estimate(_join_size, owner, *args)
            else:
                size = _estimate(_METHOD_SIZES[name], owner, *args, **kwargs)
            _limit(size, f"{type(owner).__name__}.{name}()")
        return _checked(super().call(context, obj, *args, **kwargs), "the result of a call")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja's own wrapper with the measuring formatters; it has no hook for the formatter.
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        formatter: _Formatter
        if isinstance(owner, Markup):
            formatter = _EscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _Formatter(self)
        is_map = value.__name__ == "format_map"
        str_type = type(owner)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return str_type(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """Join the output of a block, macro, `{% set %}` capture or whole template, stopping as
        soon as it passes MAX_OUTPUT instead of after joining it."""
        buffer: list[str] = []
        size = 0
        for part in parts:
            size += len(part)
            _limit(size, "rendered text")
            buffer.append(part)
        return "".join(buffer)

    def concat_parts(self, markup: bool, parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`, measured before the parts are converted and joined."""
        _limit(sum(_text_size(part) for part in parts), "'~'")
        return markup_join(parts) if markup else str_join(parts)

    def sized(self, value: _T) -> _T:
        """A list, tuple or dict literal, refused when it would print longer than MAX_OUTPUT."""
        _limit(_text_size(value), "a list, tuple or dict")
        return value


_SEQUENCES = (str, bytes, list, tuple)


def _limit_bits(bits: int) -> None:
    # Multiplying or raising huge numbers runs for minutes inside one C call.
    if bits > MAX_INT_BITS:
        raise SecurityError(f"a number larger than {MAX_INT_BITS} bits in a template")


# --- loading --------------------------------------------------------------------------------------


class _LastGoodLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that reads only regular files inside its directory, and keeps the last
    template that compiled when a newer edit does not.

    Each name is resolved, symlinks included, and its real path must lie inside the real path of
    the directory: a link to /etc/hostname or to the IMAP password file cannot be included,
    imported, extended or used as a reply. Jinja reloads a template whose mtime changed
    (`auto_reload`); when the new source has a syntax error this loader reports it once and
    returns the previous compiled template instead.
    """

    def __init__(self, directory: Path, report: Callable[[str, str], None]) -> None:
        super().__init__(str(directory), followlinks=False)
        self._directory = str(directory)
        self._good: dict[str, jinja2.Template] = {}
        self._report = report

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        path = os.path.normpath(os.path.join(self._directory, *split_template_path(template)))
        root = os.path.realpath(self._directory)
        real = os.path.realpath(path)
        if not _inside(real, root):
            raise SecurityError(f"template {template} resolves outside the templates directory")
        source, mtime = _read_template(real, template, root, self.encoding)
        try:
            seen = os.lstat(path)
        except OSError:
            seen = None
        # A name that was a regular file (not a link) is known by its identity: one lstat per
        # render shows it is the same file, unchanged, at the same name. Each render checks
        # freshness, and resolving every folder of the path was a tenth of composing a reply.
        same = (
            (seen.st_dev, seen.st_ino, seen.st_mtime_ns)
            if seen is not None and stat.S_ISREG(seen.st_mode) and seen.st_mtime_ns == mtime
            else None
        )

        def uptodate() -> bool:
            # Stale too when the name resolves elsewhere now: a partial swapped for a link, or
            # a folder on the way swapped for one (another identity at the same name).
            try:
                if same is not None:
                    now = os.lstat(path)
                    return (now.st_dev, now.st_ino, now.st_mtime_ns) == same and stat.S_ISREG(
                        now.st_mode
                    )
                return os.path.realpath(path) == real and os.stat(real).st_mtime_ns == mtime
            except OSError:
                return False

        return source, path, uptodate

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


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _read_template(real: str, name: str, root: str, encoding: str) -> tuple[str, int]:
    """The text and mtime (ns) of template `name`, the file at `real`.

    Only a regular file is read (a FIFO would block the thread, /dev/zero would never end), and,
    where /proc shows what was opened, only when the opened file is still inside `root`: a link
    swapped in between the check and the open is refused too.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise jinja2.TemplateNotFound(name) from None
    except OSError as exc:
        raise jinja2.TemplateError(f"cannot read template {name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise jinja2.TemplateNotFound(name)
        opened = _opened_path(fd)
        if opened is not None and not _inside(opened, root):
            raise SecurityError(f"template {name} resolves outside the templates directory")
        with open(fd, "rb", closefd=False) as file:
            data = file.read()
    except OSError as exc:
        raise jinja2.TemplateError(f"cannot read template {name}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return data.decode(encoding), info.st_mtime_ns


def _opened_path(fd: int) -> str | None:
    """The real path of the file open as `fd`, where the system shows it (Linux)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _where(exc: jinja2.TemplateSyntaxError) -> str:
    return f"{exc.filename or exc.name}:{exc.lineno}"


def make_environment(
    directory: Path,
    report: Callable[[str, str], None] | None = None,
    *,
    autoescape: bool | None = None,
    render_timeout: float = RENDER_TIMEOUT,
) -> jinja2.Environment:
    """The sandboxed environment over `directory`: strict variables, bounded size and time.

    `autoescape` True or False holds for everything the environment loads, included and imported
    files too; None (the default) escapes the `.html` files only, whoever includes them.
    """
    env = _Sandbox(
        loader=_LastGoodLoader(directory, report or (lambda name, message: None)),
        undefined=jinja2.StrictUndefined,
        autoescape=(
            jinja2.select_autoescape(enabled_extensions=("html",), default=False)
            if autoescape is None
            else autoescape
        ),
        auto_reload=True,
        keep_trailing_newline=True,
        render_timeout=render_timeout,
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

    def __init__(
        self,
        directory: Path,
        default_language: str = "en",
        render_timeout: float = RENDER_TIMEOUT,
    ) -> None:
        self.directory = Path(directory)
        self.default_language = default_language.lower()
        self.render_timeout = render_timeout
        self._reported: set[tuple[str, str]] = set()
        self._rendered_ok: dict[str, jinja2.Template] = {}
        # The part being rendered decides escaping, not the name of each file it uses: a `.txt`
        # partial is escaped when the HTML part includes it and verbatim in the text part. Jinja
        # compiles escaping into each loaded template, hence one environment per kind of part.
        self._env = self._environment(autoescape=False, report=self._report_once)
        self._html_env = self._environment(autoescape=True, report=self._report_once)

    def _environment(
        self, *, autoescape: bool, report: Callable[[str, str], None] | None = None
    ) -> jinja2.Environment:
        return make_environment(
            self.directory, report, autoescape=autoescape, render_timeout=self.render_timeout
        )

    @classmethod
    def from_settings(cls, replies: RepliesSettings) -> TemplateRenderer:
        """The renderer configured by `[replies] templates_dir` and `default_language`."""
        return cls(replies.templates_dir, replies.default_language)

    # --- finding files ---------------------------------------------------------------------------

    def files(self) -> list[str]:
        """Every template file name in the directory (sorted), partials included; symlinks too,
        so that `check` reports one that leads elsewhere."""
        try:
            entries = sorted(
                p.name for p in self.directory.iterdir() if p.is_file() or p.is_symlink()
            )
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
        env = self._html_env if filename.endswith(".html") else self._env
        try:
            template = env.get_template(filename)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{self._path(exc)}: {exc.message}") from None
        except jinja2.TemplateNotFound:
            raise TemplateError(f"template {self.directory / filename} disappeared") from None
        except jinja2.TemplateError as exc:  # outside the directory, unreadable
            raise TemplateError(f"{self.directory / filename}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise TemplateError(
                f"{self.directory / filename}: not UTF-8 text: {exc.reason}"
            ) from None
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
        # No last-good fallback here: report each file as it is.
        text, html = self._environment(autoescape=False), self._environment(autoescape=True)
        for entry in files:
            problems.extend(
                self._check_file(html if entry.endswith(".html") else text, entry, variables)
            )
        problems.extend(self._check_sets(files))
        return problems

    def check_file(self, entry: str, variables: ReplyVariables) -> list[Problem]:
        """The problems of one file as `check` reports them (its name, syntax, unknown
        variables, rendering against `variables`), without those of the set it belongs to."""
        env = self._environment(autoescape=entry.endswith(".html"))
        return self._check_file(env, entry, variables)

    def _check_file(
        self, env: jinja2.Environment, entry: str, variables: ReplyVariables
    ) -> list[Problem]:
        path = str(self.directory / entry)
        partial = entry.startswith("_")
        if not partial and not _FILE_RE.match(entry):
            return [Problem(path, None, "file name is not NAME[.LANG].subject|txt|html")]
        ast = _parse_file(env, entry, path)
        if isinstance(ast, Problem):
            return [ast]
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


def _parse_file(env: jinja2.Environment, entry: str, path: str) -> nodes.Template | Problem:
    """The syntax tree of template file `entry`, or the problem that prevents reading it."""
    assert env.loader is not None
    try:
        # Through the loader, which refuses a link out of the directory before reading anything.
        source, _, _ = env.loader.get_source(env, entry)
        return env.parse(source, entry, path)
    except UnicodeDecodeError as exc:
        return Problem(path, None, f"not UTF-8 text: {exc.reason}")
    except OSError as exc:
        return Problem(path, None, f"cannot read: {exc.strerror}")
    except jinja2.TemplateSyntaxError as exc:
        return Problem(path, exc.lineno, f"syntax error: {exc.message}")
    except jinja2.TemplateNotFound:
        return Problem(path, None, "not a regular file")
    except jinja2.TemplateError as exc:
        return Problem(path, None, str(exc))


def _render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """`template` rendered, stopped at MAX_OUTPUT characters and at the environment's time limit.

    Streamed, so a runaway loop stops at the limit instead of building the whole output first.
    """

    def produce() -> str:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise ValueError(f"rendered output is longer than {MAX_OUTPUT} characters")
            chunks.append(chunk)
        return "".join(chunks)

    return _within_time(_timeout_of(template.environment), produce)


def describe(exc: BaseException) -> str:
    """A one-line description of a render error for the operator."""
    if isinstance(exc, RenderTimeout):
        return str(exc)
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
