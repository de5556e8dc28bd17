"""HTML to plain text for classification and quote stripping: fast, bounded, never raises.

html2text and `html.parser` run a Python callback per token and cost milliseconds per message,
which is most of a parse. Mail HTML only needs its words, its line structure and its quoted
blocks, so this converter is a handful of linear regular-expression passes. Each pattern is
written so a failed match cannot rescan the rest of the document (no quadratic blow-up on junk
like `<a<a<a…`), and the input is capped, so the cost is bounded by size.
"""

from __future__ import annotations

import html
import re

MAX_HTML_CHARS = 512 * 1024

# Content that is never shown. An unterminated comment, script or style runs to the end of the
# document, as in browsers; `\Z` makes the match succeed there instead of failing and rescanning.
_INVISIBLE = re.compile(
    r"<!--.*?(?:-->|\Z)|<(script|style|xml|template)\b[^<>]*>.*?(?:</\1\s*>|\Z)"
    r"|<!\[CDATA\[.*?(?:\]\]>|\Z)|<![^<>]*>|<\?[^<>]*>",
    re.DOTALL | re.IGNORECASE,
)
_HEAD_OPEN = re.compile(r"<head[\s>]", re.IGNORECASE)
_HEAD_CLOSE = re.compile(r"</head\s*>", re.IGNORECASE)
_PRE = re.compile(r"(<pre\b[^<>]*>.*?(?:</pre\s*>|\Z))", re.DOTALL | re.IGNORECASE)
_WHITESPACE = re.compile(r"[ \t\r\n\f]+")
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9:-]*)[^<>]*>")
_BLANK_RUNS = re.compile(r"\n{3,}")
_LINE_SPACE = re.compile(r"[ \t\xa0\u200b\u200c\u200d\ufeff]+")

_QUOTE_OPEN, _QUOTE_CLOSE = "\x01", "\x02"


def _word_set(words: str) -> frozenset[str]:
    """A set of words written as one space-separated string."""
    return frozenset(words.split())


_BLOCK = _word_set(
    "p div br tr table h1 h2 h3 h4 h5 h6 ul ol dl dt dd hr pre center form address"
    " section article header footer main nav aside figure caption tbody thead tfoot"
)


def _tag(match: re.Match[str]) -> str:
    name = match.group(2).lower()
    if name in _BLOCK:
        return "\n"
    if name == "li":
        return "" if match.group(1) else "\n- "
    if name in ("td", "th"):
        return " "
    if name == "blockquote":
        return f"\n{_QUOTE_CLOSE}\n" if match.group(1) else f"\n{_QUOTE_OPEN}\n"
    return ""


def _quote_blocks(text: str) -> str:
    """Prefix the lines inside <blockquote> with `> `, one per nesting level, like mail clients."""
    out: list[str] = []
    depth = 0
    for piece in re.split(f"([{_QUOTE_OPEN}{_QUOTE_CLOSE}])", text):
        if piece == _QUOTE_OPEN:
            depth += 1
        elif piece == _QUOTE_CLOSE:
            depth = max(0, depth - 1)
        elif depth:
            prefix = "> " * depth
            out.append("\n".join(prefix + line if line else line for line in piece.split("\n")))
        else:
            out.append(piece)
    return "".join(out)


def _drop_head(markup: str) -> str:
    """Remove the first <head>…</head> (title, meta); an unclosed head is left alone."""
    opening = _HEAD_OPEN.search(markup)
    if opening is None:
        return markup
    closing = _HEAD_CLOSE.search(markup, opening.end())
    if closing is None:
        return markup
    return markup[: opening.start()] + markup[closing.end() :]


def to_text(markup: str) -> str:
    """The visible text of an HTML document, with line breaks for blocks and `> ` for quotes."""
    markup = markup[:MAX_HTML_CHARS]
    markup = _INVISIBLE.sub("", markup)
    markup = _drop_head(markup)
    if "<pre" in markup or "<PRE" in markup:
        pieces = _PRE.split(markup)
        markup = "".join(
            piece.replace("\n", "<br>") if index % 2 else _WHITESPACE.sub(" ", piece)
            for index, piece in enumerate(pieces)
        )
    else:
        markup = _WHITESPACE.sub(" ", markup)
    text = html.unescape(_TAG.sub(_tag, markup))
    if _QUOTE_OPEN in text:
        text = _quote_blocks(text)
    lines = [_LINE_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()
