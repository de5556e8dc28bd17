"""The store's SQL, written for sqlite3's placeholders, as psycopg expects it.

The store writes `?` for positional parameters and `:name` for named ones (sqlite3's styles).
psycopg wants `%s` and `%(name)s`, and it reads every `%` of a statement as the start of a
placeholder, even when no parameters are passed, so a literal `%` must be doubled. `translate`
rewrites one statement, leaving alone what sits in '…' literals, "…" identifiers, $tag$…$tag$
bodies and comments (except `%`, which psycopg parses there too). A `::` is a cast, never a named
parameter. Each distinct statement is translated once (the store has a few hundred).
"""

from __future__ import annotations

import functools

__all__ = ["translate"]

_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT = _IDENT_START | frozenset("0123456789")


def _quoted_end(sql: str, start: int, quote: str) -> int:
    """Index just past the literal or identifier opening at `start` ('' and "" are doubled
    quotes inside it); the end of `sql` when it is never closed (the server reports that)."""
    i = start + 1
    while True:
        i = sql.find(quote, i)
        if i < 0:
            return len(sql)
        if i + 1 < len(sql) and sql[i + 1] == quote:
            i += 2
            continue
        return i + 1


def _dollar_tag(sql: str, start: int) -> str | None:
    """The `$tag$` opening a dollar-quoted body at `start`, or None (`$1`, a lone `$`)."""
    end = start + 1
    while end < len(sql) and sql[end] in _IDENT:
        end += 1
    if end < len(sql) and sql[end] == "$" and (end == start + 1 or sql[start + 1] in _IDENT_START):
        return sql[start : end + 1]
    return None


def _skip_end(sql: str, i: int) -> int:
    """Where the literal, identifier, body or comment starting at `i` ends, or `i` if none does."""
    char = sql[i]
    if char in "'\"":
        return _quoted_end(sql, i, char)
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end
    if sql.startswith("/*", i):
        end = sql.find("*/", i + 2)
        return len(sql) if end < 0 else end + 2
    if char == "$" and (i == 0 or sql[i - 1] not in _IDENT):
        tag = _dollar_tag(sql, i)
        if tag is not None:
            end = sql.find(tag, i + len(tag))
            return len(sql) if end < 0 else end + len(tag)
    return i


@functools.lru_cache(maxsize=1024)
def translate(sql: str, named: bool) -> str:
    """`sql` with `?` → `%s`, `:name` → `%(name)s` (only when `named`: the parameters are a
    mapping) and every `%` → `%%`; quoted text and comments keep their `?` and `:`."""
    out: list[str] = []
    i = 0
    length = len(sql)
    while i < length:
        end = _skip_end(sql, i)
        if end > i:
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        char = sql[i]
        if char == "?":
            out.append("%s")
            i += 1
        elif char == "%":
            out.append("%%")
            i += 1
        elif char == ":" and sql.startswith("::", i):
            out.append("::")
            i += 2
        elif char == ":" and named and i + 1 < length and sql[i + 1] in _IDENT_START:
            end = i + 1
            while end < length and sql[end] in _IDENT:
                end += 1
            out.append(f"%({sql[i + 1 : end]})s")
            i = end
        else:
            # Copy the run of ordinary characters up to the next one that matters.
            end = i + 1
            while end < length and sql[end] not in "?%:'\"-/$":
                end += 1
            out.append(sql[i:end])
            i = end
    return "".join(out)
