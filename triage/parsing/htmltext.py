"""HTML to plain text for classification and quote stripping: fast, bounded, never raises.

html2text and `html.parser` run a Python callback per token and cost milliseconds per message,
which is most of a parse. Mail HTML only needs its words, its line structure and its quoted
blocks, so this converter removes invisible content (comments, scripts, styles) in one C-level
pass, then makes one pass over the rest: a regular expression finds the next tag, and the text
before it has its entities decoded and is written out on the way. Each pattern is written so a
failed match cannot rescan the rest of the document (no quadratic blow-up on junk like
`<a<a<a…`). The input is capped and the output is bounded while it is written: quote prefixes
are at most `MAX_QUOTE_LEVELS` deep and conversion stops once `limit` characters are out, so the
cost is linear in a bounded size whatever the nesting.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import NamedTuple

from triage.core.sanitize import strip_invisible

MAX_HTML_CHARS = 200_000  # marketing mail is far smaller; more only costs time
MAX_TEXT_CHARS = 100_000  # text written; the parser keeps no more of a body
MAX_QUOTE_LEVELS = 8  # `> ` prefixes shown; a reply chain is rarely deeper and never needs more

# Content that is never shown: removed first, in one C-level pass, because mail puts comments
# even inside attribute values (`<div style="…<!--[if mso]>…<![endif]-->">`). An unterminated
# comment, script or style runs to the end of the document, as in browsers; `\Z` makes the match
# succeed there instead of failing and rescanning.
_INVISIBLE = re.compile(
    r"<!--.*?(?:-->|\Z)|<(script|style|xml|template)\b[^<>]*>.*?(?:</\1\s*>|\Z)"
    r"|<!\[CDATA\[.*?(?:\]\]>|\Z)|<![^<>]*>|<\?[^<>]*>",
    re.DOTALL | re.IGNORECASE,
)
# A tag; its name (group 1) is matched possessively (`*+`): otherwise `<` followed by a long run
# of letters and no `>` would be split between name and attributes in every possible way.
_TAG = re.compile(r"<(/?[a-zA-Z][a-zA-Z0-9:-]*+)[^<>]*>")
_HEAD_OPEN = re.compile(r"<head[\s>]", re.IGNORECASE)
_HEAD_CLOSE = re.compile(r"</head\s*>", re.IGNORECASE)
# A character reference, as `html.unescape` finds them (named ones without `;` included).
_REFERENCE = re.compile(r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")

# What a tag does to the text around it.
_BREAK, _ITEM, _CELL, _QUOTE, _UNQUOTE, _PRE, _UNPRE = range(7)

_BLOCKS = (
    "p div br tr table h1 h2 h3 h4 h5 h6 ul ol dl dt dd hr center form address"
    " section article header footer main nav aside figure caption tbody thead tfoot"
)


def _actions() -> dict[str, int]:
    """What each tag (`name` or `/name`) does, for its lower, upper and title spellings: a dict
    hit is the fast path of the per-tag work."""
    lower = {name: _BREAK for block in _BLOCKS.split() for name in (block, "/" + block)}
    lower |= {"li": _ITEM, "td": _CELL, "/td": _CELL, "th": _CELL, "/th": _CELL}
    lower |= {"blockquote": _QUOTE, "/blockquote": _UNQUOTE, "pre": _PRE, "/pre": _UNPRE}
    spelled = dict(lower)
    for name, action in lower.items():
        for variant in (name.upper(), name.title(), "/" + name[1:].title()):
            spelled.setdefault(variant, action)
    return spelled


_ACTIONS = _actions()
_LOWER_ACTIONS = {name: action for name, action in _ACTIONS.items() if name.islower()}
_PREFIXES = tuple("> " * level for level in range(MAX_QUOTE_LEVELS + 1))


class Converted(NamedTuple):
    """The text of an HTML document and what was cut from it (defect strings)."""

    text: str
    defects: tuple[str, ...]


@lru_cache(maxsize=1024)
def _unescape(reference: str) -> str:
    # A reference to a character that shows as nothing (`&#x200B;`, `&#x202E;`) is dropped.
    return strip_invisible(html.unescape(reference))


def _reference(match: re.Match[str]) -> str:
    reference = match.group(0)
    if reference[1] == "#":
        digits = reference[3:] if reference[2] in "xX" else reference[2:]
        if len(digits.rstrip(";").lstrip("0")) > 8:
            # Beyond any code point; `html.unescape` would convert every digit to an int first
            # (and refuses more than 4300 of them).
            return "\ufffd"
    return _unescape(reference)


class _Lines:
    """The text being written: finished lines, the pieces of the current one, and what decides
    how the next line is written (quote depth, inside <pre>). It stops taking text once `limit`
    characters are written."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[str] = []
        self.size = 0
        self.pieces: list[str] = []
        self.depth = 0
        self.deepest = 0
        self.pre = False
        self.blank = True  # no blank line at the start, nor two in a row
        self.cut = False  # text was refused: the limit was reached

    @property
    def full(self) -> bool:
        """True once `limit` characters are written."""
        return self.size >= self.limit

    def text(self, run: str) -> None:
        """Add text found between tags; only inside <pre> do its line breaks count."""
        if self.pre and "\n" in run:
            first, *rest = run.split("\n")
            self.pieces.append(first)
            for line in rest:
                self.end_line()
                if self.full:
                    self.cut = True
                    return
                self.pieces.append(line)
        else:
            self.pieces.append(run)

    def end_line(self) -> None:
        """Finish the current line: entities decoded, whitespace collapsed, quote prefix added,
        and runs of blank lines kept to one."""
        if self.pieces:
            line = "".join(self.pieces) if len(self.pieces) > 1 else self.pieces[0]
            self.pieces.clear()
            if "&" in line:
                line = _REFERENCE.sub(_reference, line)
            line = " ".join(line.split())
        else:
            line = ""
        if line:
            if self.depth:
                line = _PREFIXES[min(self.depth, MAX_QUOTE_LEVELS)] + line
            self.lines.append(line)
            self.size += len(line) + 1
            self.blank = False
        elif not self.blank:
            self.lines.append("")
            self.size += 1
            self.blank = True

    def tag(self, action: int) -> None:
        """Apply what a block-level tag does to the text around it."""
        if action == _CELL:
            self.pieces.append(" ")
            return
        self.end_line()
        if action == _ITEM:
            self.pieces.append("- ")
        elif action in (_QUOTE, _UNQUOTE):
            self.end_line()  # a blank line before and after a quoted block, like mail clients
            self.depth = self.depth + 1 if action == _QUOTE else max(0, self.depth - 1)
            self.deepest = max(self.deepest, self.depth)
        elif action in (_PRE, _UNPRE):
            self.pre = action == _PRE

    def result(self, defects: list[str]) -> Converted:
        """The text written, at most `limit` characters, and the defects of the conversion."""
        self.end_line()
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        text = "\n".join(self.lines)
        if self.cut or len(text) > self.limit:
            text = text[: self.limit].rstrip()
            defects.append("text too long; truncated")
        if self.deepest > MAX_QUOTE_LEVELS:
            defects.append(f"quotes nested {self.deepest} deep; {MAX_QUOTE_LEVELS} levels shown")
        return Converted(text, tuple(defects))


def _drop_head(markup: str) -> str:
    """Remove the first <head>…</head> (title, meta); an unclosed head is left alone."""
    opening = _HEAD_OPEN.search(markup)
    if opening is None:
        return markup
    closing = _HEAD_CLOSE.search(markup, opening.end())
    if closing is None:
        return markup
    return markup[: opening.start()] + markup[closing.end() :]


def convert(markup: str, limit: int = MAX_TEXT_CHARS) -> Converted:
    """The visible text of an HTML document, with line breaks for blocks and `> ` for quotes,
    at most `limit` characters, and what was cut from it."""
    defects: list[str] = []
    if len(markup) > MAX_HTML_CHARS:
        defects.append("HTML too long; only its start converted")
        markup = markup[:MAX_HTML_CHARS]
    markup = _drop_head(_INVISIBLE.sub("", markup))
    # Characters that show as nothing (str.split does not count them as whitespace) or reorder
    # the text around them: one pass, with the same list as every value shown to a person.
    markup = strip_invisible(markup)
    # Text and tag names alternate: [text, name, text, name, …, text], split in C.
    tokens = _TAG.split(markup)
    out = _Lines(limit)
    out.text(tokens[0])
    actions, lower_actions = _ACTIONS, _LOWER_ACTIONS
    for index in range(1, len(tokens), 2):
        name = tokens[index]
        action = actions.get(name)
        if action is None and not name.islower():
            action = lower_actions.get(name.lower())  # an odd spelling like "Div"
        if action is not None:
            # Inline tags (span, a, font, img), most of them, do nothing.
            out.tag(action)
            if out.full:
                out.cut = True
                break
        text = tokens[index + 1]
        if text:
            out.text(text)
    return out.result(defects)


def to_text(markup: str, limit: int = MAX_TEXT_CHARS) -> str:
    """The visible text of an HTML document, with line breaks for blocks and `> ` for quotes."""
    return convert(markup, limit).text
