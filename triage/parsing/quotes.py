"""The new text of a message: the quoted thread and the signature removed.

Mail clients mark the start of the quoted thread in a few ways: `>` prefixes, an attribution
line ("On … wrote:", "Am … schrieb …:", "Le … a écrit :", …), a separator ("-----Original
Message-----", "---------- Forwarded message ---------") or Outlook's copied header block
("From: … Sent: … To: … Subject: …"). Signatures start at "-- ", at a phone's "Sent from my
iPhone", or after a valediction ("Best regards,", "Mit freundlichen Grüßen", …) followed by a
few short lines.

This runs on every message, so it is built for speed: cheap scans whose patterns begin with a
literal (`\\n`, `:`) find the few candidate lines, and only those lines meet the detailed
patterns. quotequail implements the same idea with a Python loop of ~30 patterns per line, which
costs milliseconds on a long mailing-list message; its pattern lists informed the ones here.
"""

from __future__ import annotations

import re

MAX_SCAN_CHARS = 60_000  # the new text of a real reply is far shorter; the rest is thread
MAX_CANDIDATES = 200
MAX_SIGNATURE_LINES = 8
VALEDICTION_WINDOW = 1500  # a valediction is searched for near the end of the text only

_WROTE = (
    r"(?:wrote|writes|schrieb|schreibt|a\s+écrit|écrit|escribió|escribio|schreef|ha\s+scritto"
    r"|scrisse|skrev|escreveu|geschreven|napisał)"
)
_INTRO = re.compile(
    r"[ \t>]*(?:On|Am|Le|El|Op|Il|Den|Em|Quoting|Zitat von|Citando|W dniu)\b", re.IGNORECASE
)
_WROTE_WORD = re.compile(
    r"(?:wrote|writes|schrieb|schreibt|crit|escribi|schreef|scritto|scrisse|skrev|escreveu"
    r"|geschreven|napisał)"
)
_WROTE_AT_END = re.compile(rf"\b{_WROTE}\b[^:\n]{{0,80}}:[ \t]*$", re.IGNORECASE)
_DATED_ADDRESS = re.compile(
    r"[ \t>]*\d{4}[/.-]\d{1,2}[/.-]\d{1,2}\b[^\n]{0,150}<[^\n>@]+@[^\n>]+>:?[ \t]*$"
)
_LOOKS_DATED = re.compile(r"@|\d{1,2}:\d\d|\d{4}")

_SEPARATOR = re.compile(
    r"[ \t>]*-{2,}[ \t]*(?:Original Message|Ursprüngliche Nachricht|Originalnachricht"
    r"|Message d'origine|Message original|Mensaje original|Messaggio originale"
    r"|Oorspronkelijk bericht|Origineel bericht|Forwarded [Mm]essage|Weitergeleitete Nachricht"
    r"|Message transféré|Mensaje reenviado|Messaggio inoltrato|Doorgestuurd bericht"
    r"|Reply message)[ \t]*-*[ \t]*$"
    r"|[ \t>]*(?:Begin forwarded message|Anfang der weitergeleiteten (?:E-Mail|Nachricht)"
    r"|Début du message réexpédié|Inicio del mensaje reenviado|Inizio messaggio inoltrato"
    r"|Begin doorgestuurd bericht):?[ \t]*$"
    r"|[ \t>]*_{10,}[ \t]*$",
    re.IGNORECASE,
)
_FROM_LABEL = r"(?:From|Von|De|Van|Da|Från|Od|Fra|Lähettäjä)"
_SENT_LABEL = (
    r"(?:Sent|Date|Gesendet|Datum|Envoyé|Date d'envoi|Enviado|Enviado el|Fecha|Verzonden"
    r"|Inviato|Data|Skickat|Sendt|Subject|Betreff|Objet|Asunto|Onderwerp|Oggetto)"
)
_SENT_LINE = re.compile(rf"[ \t>*]*{_SENT_LABEL}[ \t]*\*?[ \t]*:")

# Cheap scans: each pattern begins with a literal, so the regex engine jumps between newlines
# or colons instead of trying every position.
_COLON_AT_EOL = re.compile(r":[ \t]*(?=\n)")
_SEPARATOR_START = re.compile(r"\n[ \t>]*(?:--|__|Begin|Anfang|Début|Inicio|Inizio)", re.IGNORECASE)
_FROM_START = re.compile(rf"\n[ \t>*]*{_FROM_LABEL}[ \t]*\*?[ \t]*:")
_QUOTED_LINE = re.compile(r"\n[ \t]*>[^\n]*")
_SIGNATURE_DELIMITER = re.compile(r"\n[ \t]*(?:--|—|__)[ \t]*(?=\n)")
# Phone and webmail footers, matched on the lower-cased start of a line.
_MOBILE_FOOTERS = (
    "sent from my ",
    "sent from mail",
    "sent from outlook",
    "sent from yahoo",
    "sent from gmail",
    "sent from samsung",
    "sent via ",
    "sent with ",
    "get outlook for",
    "von meinem ",
    "gesendet von meinem",
    "envoyé de mon",
    "envoyé depuis mon",
    "enviado desde mi",
    "enviado de mi",
    "verzonden vanaf mijn",
    "verzonden met mijn",
    "inviato da ",
    "inviato dal mio",
)


def _valedictions() -> frozenset[str]:
    """Closing phrases, lower-cased, with the ü/ue and ß/ss spellings of German."""
    phrases = [
        "regards",
        "best regards",
        "kind regards",
        "warm regards",
        "warmest regards",
        "best wishes",
        "with best regards",
        "with kind regards",
        "many thanks",
        "thanks",
        "thank you",
        "thanks again",
        "thanks in advance",
        "thx",
        "cheers",
        "best",
        "all the best",
        "sincerely",
        "yours sincerely",
        "yours truly",
        "yours faithfully",
        "respectfully",
        "mit freundlichen grüßen",
        "freundliche grüße",
        "mfg",
        "viele grüße",
        "beste grüße",
        "liebe grüße",
        "herzliche grüße",
        "grüße",
        "gruß",
        "lg",
        "vg",
        "cordialement",
        "bien cordialement",
        "bien à vous",
        "salutations",
        "meilleures salutations",
        "sincères salutations",
        "amitiés",
        "saludos",
        "un saludo",
        "saludos cordiales",
        "atentamente",
        "un abrazo",
        "met vriendelijke groet",
        "met vriendelijke groeten",
        "vriendelijke groet",
        "vriendelijke groeten",
        "groeten",
        "mvg",
        "cordiali saluti",
        "distinti saluti",
        "saluti",
        "un saluto",
        "grazie",
        "grazie mille",
    ]
    spelled = set(phrases)
    for phrase in phrases:
        spelled.add(phrase.replace("ü", "ue").replace("ß", "ss"))
        spelled.add(phrase.replace("ß", "ss"))
    return frozenset(spelled)


_VALEDICTIONS = _valedictions()
TAIL_LINES = 40  # footers and valedictions are looked for among the last lines only
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _line_at(scan: str, start: int) -> str:
    end = scan.find("\n", start)
    return scan[start : end if end != -1 else len(scan)]


def _line_start(scan: str, position: int) -> int:
    return scan.rfind("\n", 0, position) + 1


def _is_attribution(line: str, previous: str) -> bool:
    """True when `line` (maybe wrapped from `previous`) says who wrote the quoted text."""
    if _DATED_ADDRESS.match(line):
        return True
    if not _WROTE_AT_END.search(line):
        return False
    return bool(_INTRO.match(line) or _LOOKS_DATED.search(line) or _INTRO.match(previous))


def _is_outlook_block(scan: str, start: int) -> bool:
    """True when a From line at `start` is followed within four lines by a Sent/Date line."""
    position = scan.find("\n", start)
    for _ in range(4):
        if position == -1:
            return False
        if _SENT_LINE.match(scan, position + 1):
            return True
        position = scan.find("\n", position + 1)
    return False


def _next_line_is_quoted(scan: str, position: int) -> bool:
    """True when the first non-empty line after `position` starts with `>`."""
    return scan[position : position + 2000].lstrip(" \t\n").startswith(">")


def _thread_starts(scan: str) -> list[tuple[int, int, bool]]:
    """Line starts where the thread may begin: (start, end of the marker, is an intro line)."""
    found: list[tuple[int, int, bool]] = []
    for match in _COLON_AT_EOL.finditer(scan):
        start = _line_start(scan, match.start())
        if not _WROTE_WORD.search(
            scan, max(start, match.start() - 120), match.start()
        ) and not _DATED_ADDRESS.match(scan, start, match.end()):
            continue
        line = scan[start : match.end()]
        previous_start = _line_start(scan, max(0, start - 1))
        previous = scan[previous_start : max(previous_start, start - 1)]
        if _is_attribution(line, ""):
            found.append((start, match.end(), True))
        elif previous and _is_attribution(previous + " " + line, previous):
            found.append((previous_start, match.end(), True))
        if len(found) >= MAX_CANDIDATES:
            break
    for match in _SEPARATOR_START.finditer(scan):
        start = match.start() + 1
        if _SEPARATOR.match(_line_at(scan, start)):
            found.append((start, start, False))
            break
    for match in _FROM_START.finditer(scan):
        if _is_outlook_block(scan, match.start() + 1):
            found.append((match.start() + 1, match.start() + 1, False))
            break
    found.sort()
    return found


def strip_thread(text: str) -> str:
    """`text` without the quoted thread: cut at the thread start, `>` lines dropped.

    An attribution line directly followed by `>` lines introduces an inline quote (the reply
    may continue below it), so only that line is dropped; any other thread start ends the new text.
    """
    scan = "\n" + text[:MAX_SCAN_CHARS] + "\n"
    cut = len(scan)
    intros: list[tuple[int, int]] = []
    for start, end, is_intro in _thread_starts(scan):
        if intros and start < intros[-1][1]:
            continue
        if is_intro and _next_line_is_quoted(scan, end):
            intros.append((start, end))
            continue
        cut = start
        break
    pieces = []
    position = 0
    for start, end in intros:
        if start < cut:
            pieces.append(scan[position:start])
            position = end
    pieces.append(scan[position:cut])
    body = "".join(pieces)
    if ">" in body:
        body = _QUOTED_LINE.sub("", body)
    return body.strip("\n")


def _is_short_signature(lines: list[str]) -> bool:
    """True when the lines after a valediction look like a signature, not more message."""
    filled = [line.strip() for line in lines if line.strip()]
    return len(filled) <= MAX_SIGNATURE_LINES and all(
        len(line) < 80 and not line.endswith("?") and len(line.split()) <= 8 for line in filled
    )


def split_signature(text: str) -> tuple[str, str]:
    """Split text into the body and its signature block.

    The signature starts at a "-- " delimiter, at a phone footer ("Sent from my iPhone"), or at
    the last valediction that is followed only by a few short lines (a name, a title, a phone).
    """
    scan = "\n" + text + "\n"
    signature = ""
    match = _SIGNATURE_DELIMITER.search(scan)
    # A delimiter on the first line would leave no body at all: that is not a signature.
    if match is not None and scan[: match.start()].strip():
        signature = scan[match.end() :].strip("\n")
        scan = scan[: match.start()]
    lines = scan.strip("\n").split("\n")
    first_tail = max(0, len(lines) - TAIL_LINES)
    for index in range(first_tail, len(lines)):
        if lines[index].lstrip(" \t>").lower().startswith(_MOBILE_FOOTERS) and index > 0:
            signature = "\n".join(lines[index + 1 :] + ([signature] if signature else []))
            del lines[index:]
            break
    for index in range(len(lines) - 1, max(0, len(lines) - TAIL_LINES) - 1, -1):
        line = lines[index]
        if len(line) > 40:
            continue
        phrase = " ".join(line.lower().replace(",", " ").replace("!", " ").split()).strip(".")
        if phrase in _VALEDICTIONS:
            if index > 0 and _is_short_signature(lines[index + 1 :]):
                after = [line.strip() for line in lines[index + 1 :] if line.strip()]
                signature = "\n".join(after + ([signature] if signature else []))
                del lines[index:]
            break
    return "\n".join(lines).strip("\n"), signature.strip()


def new_text(text: str) -> tuple[str, str]:
    """The new text of a message (no thread, no signature) and its signature block."""
    body, signature = split_signature(strip_thread(text))
    return _BLANK_RUNS.sub("\n\n", body).strip(), signature
