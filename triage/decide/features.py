"""What the model sees of a message: one list of readable terms per message, and their counts.

`message_terms` turns an `InboundMessage` into terms: the words of the subject and the new text
(quotes and signature removed by the parser), word stems, subject words, and a few
header/structure facts. `TermCounter`, the first step of the saved pipeline, counts them over the
vocabulary learnt in training. The same function serves training, prediction and explanation, and
the term names double as the explanation shown to people.

Changing what this module produces changes what a saved model means: bump `FEATURE_VERSION`, which
the model card records and `triage.decide.classify` checks, and retrain.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from sklearn.base import BaseEstimator, TransformerMixin

from triage.core.models import InboundMessage

FEATURE_VERSION = 2

# Intent is stated early; long tails (pasted logs, legal footers, newsletters) only add noise and
# time. 3,000 characters keep every hand-written inquiry whole while bounding the cost per message.
MAX_TEXT_CHARS = 3000
MAX_SUBJECT_CHARS = 300
# Words are cut to this many characters for a stem term, so inflections share a feature
# ("pricing", "prices" → "pric*"; "Angebot", "Angeboten" → "ange*") without a stemmer per
# language. Words of this length or shorter are their own stem. On the corpus, 4 did better than
# 5 or 6, and stems did better than word pairs (which cost time and were dropped).
STEM_CHARS = 4

# Character n-grams: scripts written without spaces between words (Chinese, Japanese) come out
# of the tokenizer as whole phrases that never repeat; they are cut into overlapping character
# pairs instead, the usual unit for searching such text (Korean, written with spaces, gets pairs
# too: its words inflect heavily). Character trigrams of Latin-script words (for typos and
# compounds) were tried and left out: on the corpus they lowered the cross-validated macro-F1 by
# 0.6 to 1.6 points whether taken from every word or only from words the vocabulary lacked
# (classifiers/README.md).
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK = re.compile(f"[{_CJK_CHARS}]")
# A token split where it moves between CJK and other letters ("iphone15の見積"): each run apart.
_SCRIPT_RUNS = re.compile(f"[{_CJK_CHARS}]+|[^{_CJK_CHARS}]+")

_DIGIT = re.compile(r"\d")
_ASCII_DIGITS = str.maketrans("123456789", "000000000")
# Words of two or more letters/digits (as scikit-learn's default), and the currency signs that
# mark a budget or a price.
_TOKEN = re.compile(r"\w\w+|[€$£¥]")
_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|antw|rif|r)\s*:", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(?:fwd?|wg|tr|rv|doorst)\s*:", re.IGNORECASE)
_MACHINE_SENDER = re.compile(
    r"^(?:no-?reply|do-?not-?reply|mailer-daemon|postmaster|notifications?|bounces?)\b",
    re.IGNORECASE,
)
_MANY_RECIPIENTS = 5


# A word holding an address, or starting like a link: one scan finds them all (cutting the text
# into words in Python and back cost more than everything else in this module).
_MASKABLE = re.compile(r"(?<!\S)(?:\S*@\S*|(?:http|www\.)\S*)")


def _mask(match: re.Match[str]) -> str:
    return "email" if "@" in match.group() else "url"


def normalise(text: str) -> str:
    """Lower-case `text` and replace what varies without meaning: URLs, addresses, digits.

    Digits become `0` so that "500 units" and "120 units" become "000 units" and "000 units"
    shapes instead of numbers the model never sees twice.
    """
    text = text.lower()
    if "@" in text or "http" in text or "www." in text:
        text = _MASKABLE.sub(_mask, text)
    if text.isascii():  # most text: one C-level table lookup per character
        return text.translate(_ASCII_DIGITS)
    return _DIGIT.sub("0", text)


def body_of(msg: InboundMessage) -> str:
    """The text the sender wrote in this message: `new_text`, else the whole text."""
    return msg.new_text.strip() or msg.text.strip()


def header_terms(msg: InboundMessage) -> list[str]:
    """Header facts as `has:…`/`is:…` terms: list and bulk headers, machine senders, threads.

    They let the model see what a header rule may not have caught, and weigh it with the text.
    """
    terms: list[str] = []
    headers = msg.headers
    if "list-id" in headers:
        terms.append("has:list-id")
    if "list-unsubscribe" in headers:
        terms.append("has:list-unsubscribe")
    if headers.get("precedence", "").strip().lower() in {"bulk", "list", "junk"}:
        terms.append("has:precedence-bulk")
    if headers.get("auto-submitted", "no").strip().lower() != "no":
        terms.append("has:auto-submitted")
    if msg.from_ is not None and _MACHINE_SENDER.match(msg.from_.local_part):
        terms.append("is:machine-sender")
    if msg.in_reply_to or msg.references or _REPLY_PREFIX.match(msg.subject):
        terms.append("is:reply")
    if _FORWARD_PREFIX.match(msg.subject):
        terms.append("is:forward")
    if len(msg.to) + len(msg.cc) > _MANY_RECIPIENTS:
        terms.append("has:many-recipients")
    return terms


def shape_terms(msg: InboundMessage) -> list[str]:
    """Structure facts as terms: HTML-only, attachments, contact details, length, language."""
    terms: list[str] = []
    if msg.text_from_html:
        terms.append("is:html-only")
    if msg.attachments:
        terms.append("has:attachment")
    if msg.contact.phone:
        terms.append("has:phone")
    if msg.contact.company:
        terms.append("has:company")
    # Unsubscribe links sit in footers, which the parser may strip from `new_text`.
    if "unsubscribe" in msg.text[-2000:].lower():
        terms.append("has:unsubscribe-text")
    length = len(body_of(msg))
    if length == 0:
        terms.append("len:empty")
    elif length < 200:
        terms.append("len:short")
    elif length < 1500:
        terms.append("len:medium")
    else:
        terms.append("len:long")
    if msg.language:
        terms.append(f"lang:{msg.language.lower()}")
    return terms


def _word_terms(tokens: list[str]) -> list[str]:
    """Words and word stems of one token list."""
    return tokens + [t[:STEM_CHARS] + "*" for t in tokens if len(t) > STEM_CHARS]


def tokens_of(text: str) -> list[str]:
    """The words of normalised `text`; runs of Chinese, Japanese or Korean become pairs."""
    tokens = _TOKEN.findall(text)
    if not _CJK.search(text):  # the common case: one C-level scan
        return tokens
    out: list[str] = []
    for token in tokens:
        if not _CJK.search(token):
            out.append(token)
            continue
        for run in _SCRIPT_RUNS.findall(token):
            if _CJK.match(run):
                out.extend(run[i : i + 2] for i in range(max(1, len(run) - 1)))
            elif len(run) > 1:
                out.append(run)
    return out


def message_terms(msg: InboundMessage) -> list[str]:
    """Every term the model counts for `msg` (repeats count): the pipeline's analyzer.

    Subject words appear twice, once plain and once as `subject:word`, because a subject states
    the purpose of a message more densely than its body.
    """
    subject = tokens_of(normalise(msg.subject[:MAX_SUBJECT_CHARS]))
    body = tokens_of(normalise(body_of(msg)[:MAX_TEXT_CHARS]))
    terms = _word_terms(subject) + _word_terms(body)
    terms += [f"subject:{t}" for t in subject]
    terms += header_terms(msg)
    terms += shape_terms(msg)
    return terms


class TermCounter(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """Pipeline step: counts `message_terms` of each message over a vocabulary learnt in `fit`.

    The vocabulary is the sorted terms found in at least `min_df` training messages; other terms
    are ignored. It is kept as one NumPy array (`terms_`), not a dict, because skops stores a dict
    entry by entry and a vocabulary of tens of thousands of terms would take seconds to load; the
    lookup dict is rebuilt from the array on first use.
    """

    def __init__(self, min_df: int = 2) -> None:
        self.min_df = min_df

    def fit(self, messages: Sequence[InboundMessage], y: object = None) -> Self:
        """Learn the vocabulary from `messages`."""
        document_frequency: Counter[str] = Counter()
        for msg in messages:
            document_frequency.update(set(message_terms(msg)))
        kept = sorted(t for t, n in document_frequency.items() if n >= self.min_df)
        if not kept:
            raise ValueError(f"no term occurs in {self.min_df} or more messages")
        self.terms_: npt.NDArray[np.str_] = np.array(kept, dtype=np.str_)
        self._index: dict[str, int] | None = None
        return self

    def _lookup(self) -> dict[str, int]:
        index = getattr(self, "_index", None)
        if index is None:
            index = {term: i for i, term in enumerate(self.terms_.tolist())}
            self._index = index
        return index

    def transform(self, messages: Iterable[InboundMessage]) -> csr_matrix:
        """Term counts: one row per message, one column per vocabulary term."""
        width = len(self.terms_)
        get = self._lookup().get
        indptr = [0]
        indices: list[int] = []
        for msg in messages:
            # Unknown terms map to an extra column `width`, dropped below: mapping with the C
            # `dict.get` is several times faster than filtering term by term in Python.
            indices.extend(map(get, message_terms(msg), itertools.repeat(width)))
            indptr.append(len(indices))
        rows = len(indptr) - 1
        counts = csr_matrix(
            (np.ones(len(indices)), np.array(indices, dtype=np.int32), np.array(indptr)),
            shape=(rows, width + 1),
        )
        counts.sum_duplicates()  # repeated terms become one entry holding the count
        known = counts.indices != width
        row_of = np.repeat(np.arange(rows), np.diff(counts.indptr))
        kept_per_row = np.bincount(row_of[known], minlength=rows)
        return csr_matrix(
            (
                counts.data[known],
                counts.indices[known],
                np.concatenate(([0], np.cumsum(kept_per_row))),
            ),
            shape=(rows, width),
        )

    def get_feature_names_out(self, input_features: object = None) -> npt.NDArray[np.object_]:
        """The vocabulary, in column order."""
        return self.terms_.astype(object)

    def __getstate__(self) -> dict[str, Any]:
        # The lookup dict is derived from `terms_`: keep it out of the saved model (see above).
        state: dict[str, Any] = dict(super().__getstate__())
        state.pop("_index", None)
        return state
