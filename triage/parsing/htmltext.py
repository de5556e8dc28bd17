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

MAX_HTML_CHARS = 200_000  # marketing mail is far smaller; more only costs time

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
# The name is matched possessively (`*+`): otherwise `<` followed by a long run of letters and
# no `>` would be split between name and attributes in every possible way.
_TAG = re.compile(r"<(/?[a-zA-Z][a-zA-Z0-9:-]*+)[^<>]*>")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Characters that show as nothing; str.split does not count them as whitespace.
_ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad")

_QUOTE_OPEN, _QUOTE_CLOSE = "\x01", "\x02"


_BLOCKS = (
    "p div br tr table h1 h2 h3 h4 h5 h6 ul ol dl dt dd hr pre center form address"
    " section article header footer main nav aside figure caption tbody thead tfoot"
)


def _replacements() -> dict[str, str]:
    """What each tag (`name` or `/name`) becomes, for its lower, upper and title spellings:
    a dict hit is the fast path of the per-tag callback."""
    lower = {name: "\n" for block in _BLOCKS.split() for name in (block, "/" + block)}
    lower |= {"li": "\n- ", "/li": "", "td": " ", "/td": " ", "th": " ", "/th": " "}
    lower |= {"blockquote": f"\n{_QUOTE_OPEN}\n", "/blockquote": f"\n{_QUOTE_CLOSE}\n"}
    spelled = dict(lower)
    for name, replacement in lower.items():
        for variant in (name.upper(), name.title(), "/" + name[1:].title()):
            spelled.setdefault(variant, replacement)
    return spelled


_REPLACEMENTS = _replacements()
_LOWER_REPLACEMENTS = {name: text for name, text in _REPLACEMENTS.items() if name.islower()}


def _tag(match: re.Match[str]) -> str:
    token = match.group(1)
    found = _REPLACEMENTS.get(token)
    if found is None:
        # Most tags are inline (span, a, font, img) and become nothing; an odd spelling like
        # "Div" costs one more lookup.
        found = _LOWER_REPLACEMENTS.get(token.lower(), "")
    return found


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


def _collapse(text: str) -> str:
    """Runs of whitespace to one space; `str.split` does it in C, unlike a regex substitution
    that calls back for every single space."""
    return " ".join(text.split())


def to_text(markup: str) -> str:
    """The visible text of an HTML document, with line breaks for blocks and `> ` for quotes."""
    markup = _drop_head(_INVISIBLE.sub("", markup[:MAX_HTML_CHARS]))
    if "<pre" in markup or "<PRE" in markup:
        pieces = _PRE.split(markup)
        markup = " ".join(
            piece.replace("\n", "<br>") if index % 2 else _collapse(piece)
            for index, piece in enumerate(pieces)
        )
    else:
        markup = _collapse(markup)
    text = _TAG.sub(_tag, markup)
    if "&" in text:
        text = html.unescape(text)
    for invisible in _ZERO_WIDTH:
        if invisible in text:
            text = text.replace(invisible, "")
    if _QUOTE_OPEN in text:
        text = _quote_blocks(text)
    return _BLANK_RUNS.sub("\n\n", "\n".join(map(_collapse, text.split("\n")))).strip()
