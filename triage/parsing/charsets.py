"""Bytes to text for declared charsets that may be unknown, misspelt or lying; never raises."""

from __future__ import annotations

import codecs
from functools import lru_cache

# Names seen in real mail that mean "I don't know" or are plainly invented: decode by content.
_UNKNOWN = frozenset(
    {
        "",
        "x-unknown",
        "unknown",
        "unknown-8bit",
        "x-user-defined",
        "fakescii",
        "default",
        "charset",
        "none",
        "invalid-charset",
        "8bit",
        "7bit",
    }
)

# Declared names Python does not know, or knows as a narrower set than mailers actually send.
_ALIASES = {
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "iso-8859-1": "cp1252",  # WHATWG: mailers label cp1252 text as ISO-8859-1
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "us-ascii": "ascii",
    "ascii": "ascii",
    "ansi_x3.4-1968": "ascii",
    "gb2312": "gbk",
    "gb_2312-80": "gbk",
    "x-gbk": "gbk",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "x-sjis": "shift_jis",
    "shift-jis": "shift_jis",
    "iso-8859-8-i": "iso-8859-8",
    "windows-874": "cp874",
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
}

# Codecs Python accepts by name that are not charsets a mailer could mean; never trust them.
_REFUSED = frozenset(
    {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "mbcs", "oem"}
)

# Codecs whose text is not ASCII although every byte is: stateful 7-bit and wide encodings.
_SEVEN_BIT_CODECS = ("iso2022", "utf_7", "hz", "utf_16", "utf_32")

# Single-byte codecs that decode any byte string; a UTF-8 body labelled with one of them
# would come out as mojibake without an error, so UTF-8 is tried first when bytes are non-ASCII.
_PERMISSIVE = frozenset({"cp1252", "iso8859_1", "iso8859_15", "ascii"})


@lru_cache(maxsize=256)
def codec_for(declared: str) -> str | None:
    """The Python codec name for a declared MIME charset, or None when it is unknown or unsafe."""
    name = declared.strip().strip("\"'").strip().lower()
    # "us-ascii (sic)", "utf-8; format=flowed": keep the first token only.
    name = name.split(None, 1)[0] if name else ""
    name = name.split(";", 1)[0].split("*", 1)[0]  # RFC 2231 language suffix: "utf-8*en"
    if name in _UNKNOWN:
        return None
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    codec = info.name.replace("-", "_")  # CodecInfo names mix "utf-7" and "iso2022_jp"
    if codec in _REFUSED or not getattr(info, "_is_text_encoding", True):
        return None
    return codec


def decode(data: bytes, declared: str = "") -> tuple[str, str | None]:
    """Decode `data` labelled with charset `declared`; return the text and a defect or None.

    The chain: the declared charset (via aliases) → UTF-8 → cp1252 with replacement characters.
    A defect string is returned when the label was unknown or did not fit the bytes.
    """
    codec = codec_for(declared) if declared else None
    if data.isascii() and (codec is None or not codec.startswith(_SEVEN_BIT_CODECS)):
        # Every other charset we accept is an ASCII superset: nothing to look up or guess.
        return data.decode("ascii"), None
    defect: str | None = None
    if codec is None and declared.strip():
        defect = f"unknown charset: {declared.strip()[:40]}"
    if codec is not None and codec not in _PERMISSIVE:
        try:
            return data.decode(codec), None
        except (UnicodeDecodeError, LookupError, ValueError):
            defect = f"charset {declared.strip()[:40]} does not fit the bytes"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass  # not UTF-8: the single-byte fallback below always succeeds
    else:
        return text, defect
    if codec in _PERMISSIVE and codec != "ascii":
        return data.decode(codec, "replace"), defect
    # An unknown label, ASCII with 8-bit bytes, or a multi-byte charset that did not fit:
    # cp1252 is what such mail most often is, and it shows every byte as something.
    return data.decode("cp1252", "replace"), defect
