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
costs milliseconds on a long mailing-list message (60 ms for 300 lines without a quote); its
pattern lists informed the ones here, and it is still used where it serves: reading the sender
out of a forwarded original that this module has already found (`Reply.original`).
"""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

MAX_SCAN_CHARS = 60_000  # the new text of a real reply is far shorter; the rest is thread
MAX_CANDIDATES = 200
MAX_ORIGINAL_CHARS = 4000  # the forwarded original's header block is near its start
MAX_SIGNATURE_LINES = 8

_WROTE = (
    r"(?:wrote|writes|schrieb|schreibt|a\s+écrit|écrit|escribió|escribio|schreef|ha\s+scritto"
    r"|scrisse|skrev|escreveu|geschreven|napisał|написал|kirjoitti|napsal|yazdı)"
)
# Chinese and Korean Gmail end the attribution with the verb and a colon, no word boundary:
# "张伟 <zw@x.example> 于2024年5月14日周二 09:12写道：", "… 홍길동 <h@x.example>님이 작성:".
_CJK_WROTE_AT_END = re.compile(r"(?:写道|寫道|작성)[ \t]*[:：][ \t]*$")
_INTRO = re.compile(
    r"[ \t>]*(?:On|Am|Le|El|Op|Il|Den|Em|Quoting|Zitat von|Citando|W dniu)\b", re.IGNORECASE
)
_WROTE_WORD = re.compile(
    r"(?:wrote|writes|schrieb|schreibt|crit|escribi|schreef|scritto|scrisse|skrev|escreveu"
    r"|geschreven|napisał|написал|kirjoitti|napsal|yazdı|写道|寫道|작성)"
)
_WROTE_AT_END = re.compile(rf"\b{_WROTE}\b[^:\n]{{0,80}}:[ \t]*$", re.IGNORECASE)
_DATED_ADDRESS = re.compile(
    r"[ \t>]*\d{4}(?:[/.-]\d{1,2}[/.-]\d{1,2}\b"
    r"|年\s?\d{1,2}月\s?\d{1,2}日|년\s?\d{1,2}월\s?\d{1,2}일)"
    r"[^\n]{0,150}<[^\n>@]{1,200}@[^\n>]{1,200}>[:：]?[ \t]*$"
)
_LOOKS_DATED = re.compile(r"@|\d{1,2}:\d\d|\d{4}")

_SEPARATOR = re.compile(
    r"[ \t>]*-{2,}[ \t]*(?:Original Message|Ursprüngliche Nachricht|Originalnachricht"
    r"|Message d'origine|Message original|Mensaje original|Messaggio originale"
    r"|Oorspronkelijk bericht|Origineel bericht|Forwarded [Mm]essage|Weitergeleitete Nachricht"
    r"|Message transféré|Mensaje reenviado|Messaggio inoltrato|Doorgestuurd bericht"
    r"|Reply message|Ursprungligt meddelande|Vidarebefordrat meddelande|Mensagem original"
    r"|Mensagem encaminhada|Oryginalna wiadomość|Wiadomość przekazana dalej|Původní zpráva"
    r"|Přeposlaná zpráva|Alkuperäinen viesti|Välitetty viesti|Oprindelig meddelelse"
    r"|Videresendt meddelelse|Opprinnelig melding|Videresendt melding|Orijinal [İI]leti"
    r"|İletilen [İi]leti|Orijinal mesaj|原始邮件|原始郵件|转发邮件|转发的邮件|轉寄郵件|轉寄的郵件"
    r"|元のメッセージ|転送されたメッセージ|원본 메시지|전달된 메시지)[ \t]*-*[ \t]*$"
    r"|[ \t>]*(?:Begin forwarded message|Anfang der weitergeleiteten (?:E-Mail|Nachricht)"
    r"|Début du message réexpédié|Inicio del mensaje reenviado|Inizio messaggio inoltrato"
    r"|Begin doorgestuurd bericht):?[ \t]*$"
    r"|[ \t>]*_{10,}[ \t]*$",
    re.IGNORECASE,
)
# The labels of a header block that Outlook, Hotmail or Thunderbird copy above the quoted
# message ("From: … Sent: … To: … Subject: …"), by what they name.
_BLOCK_LABELS = {
    "from": "From|Von|De|Van|Da|Från|Od|Fra|Lähettäjä|Kimden|差出人|送信者|发件人|發件人|寄件者"
    "|보낸 사람",
    "date": "Sent|Date|Gesendet|Datum|Envoyé|Date d'envoi|Enviado|Enviado el|Fecha|Verzonden"
    "|Inviato|Data|Skickat|Sendt|Wysłano|Odesláno|Lähetetty|Päivämäärä|Tarih|Gönderildi"
    "|送信日時|日付|发送时间|發送時間|寄件日期|日期|时间|時間|보낸 날짜",
    "to": "To|An|À|A|Para|Aan|Till|Cc|Kopie|CC|Do|Komu|Vastaanottaja|Til|Kime|宛先|收件人|收件者"
    "|받는 사람",
    "subject": "Subject|Betreff|Objet|Asunto|Onderwerp|Oggetto|Ämne|Assunto|Temat|Předmět|Aihe"
    "|Emne|Konu|件名|主题|主題|主旨|제목",
}
_LABEL_KIND = {
    label.lower(): kind for kind, labels in _BLOCK_LABELS.items() for label in labels.split("|")
}
_ANY_LABEL = "|".join(_BLOCK_LABELS.values())
# Possessive `*+` everywhere two runs of blanks meet, so a failed match cannot backtrack
# quadratically over a long run of spaces.
_LABEL_COLON = (
    r"[ \t]*+(?:\*[ \t]*+)?[:：]"  # Chinese and Japanese clients write a full-width colon
)
_BLOCK_LINE = re.compile(rf"[ \t>*]*+({_ANY_LABEL}){_LABEL_COLON}")
MAX_BLOCK_LINES = 10
MAX_BLOCK_CHARS = 2000  # of a header block, searched for an address or a time
_TIME_OF_DAY = re.compile(r"\d{1,2}[:：]\d\d|\d{1,2}時")
_RULE_LINE = re.compile(r"[ \t>]*(?:-{2,}|_{2,})")

# Cheap scans: each pattern begins with a literal, so the regex engine jumps between newlines
# or colons instead of trying every position.
_COLON_AT_EOL = re.compile(r"[:：][ \t]*(?=\n)")
# Substrings without which the scans below cannot match; one search for any of them is several
# times cheaper than the scan it spares.
# (Case-sensitive on purpose: with IGNORECASE the regex engine loses its fast scan, 20x slower.)
_SEPARATOR_MARKERS = re.compile("--|__|Begin|begin|BEGIN|Anfang|Début|Inicio|Inizio")
_FROM_MARKERS = re.compile(rf"(?:{_BLOCK_LABELS['from']})[ *]?[:：]")
_SEPARATOR_START = re.compile(r"\n[ \t>]*(?:--|__|Begin|begin|BEGIN|Anfang|Début|Inicio|Inizio)")
_BLOCK_START = re.compile(rf"\n[ \t>*]*+(?:{_ANY_LABEL}){_LABEL_COLON}")
_QUOTED_LINE = re.compile(r"\n[ \t]*>[^\n]*")
_SIGNATURE_DELIMITER = re.compile(r"\n[ \t]*(?:--|—|__)[ \t]*(?=\n)")
# Phone and webmail footers, matched on the lower-cased start of a line; the markers are what
# any of them contains, to skip the line loop for the many texts without one.
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
_MOBILE_MARKERS = (
    "sent ",
    "get outlook",
    "von meinem",
    "gesendet von",
    "envoyé de",
    "envoyé depuis",
    "enviado de",
    "verzonden ",
    "inviato da",
)
_VALEDICTION_PHRASES = (
    "regards|best regards|kind regards|warm regards|warmest regards|best wishes"
    "|with best regards|with kind regards|many thanks|thanks|thank you|thanks again"
    "|thanks in advance|thx|cheers|best|all the best|sincerely|yours sincerely|yours truly"
    "|yours faithfully|respectfully|mit freundlichen grüßen|freundliche grüße|mfg"
    "|viele grüße|beste grüße|liebe grüße|herzliche grüße|grüße|gruß|lg|vg|cordialement"
    "|bien cordialement|bien à vous|salutations|meilleures salutations"
    "|sincères salutations|amitiés|saludos|un saludo|saludos cordiales|atentamente"
    "|un abrazo|met vriendelijke groet|met vriendelijke groeten|vriendelijke groet"
    "|vriendelijke groeten|groeten|mvg|cordiali saluti|distinti saluti|saluti|un saluto"
    "|grazie|grazie mille|take care|talk soon|merci|merci beaucoup|merci d'avance"
    "|merci d'avance et bonne journée|bonne journée|danke|vielen dank|danke im voraus"
    "|gracias|muchas gracias|bedankt|alvast bedankt|hartelijk dank"
)


def _valedictions() -> frozenset[str]:
    """Closing phrases, lower-cased, with the ü/ue and ß/ss spellings of German."""
    phrases = _VALEDICTION_PHRASES.split("|")
    spelled = set(phrases)
    for phrase in phrases:
        spelled.add(phrase.replace("ü", "ue").replace("ß", "ss"))
        spelled.add(phrase.replace("ß", "ss"))
    return frozenset(spelled)


_VALEDICTIONS = _valedictions()
TAIL_LINES = 25  # footers and valedictions are looked for among the last lines only
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _line_at(scan: str, start: int) -> str:
    end = scan.find("\n", start)
    return scan[start : end if end != -1 else len(scan)]


def _line_start(scan: str, position: int) -> int:
    return scan.rfind("\n", 0, position) + 1


def _is_attribution(line: str) -> bool:
    """True when `line` says who wrote the quoted text and when ("On … wrote:")."""
    if _DATED_ADDRESS.match(line):
        return True
    if _CJK_WROTE_AT_END.search(line) and "@" in line:
        return True
    if not _WROTE_AT_END.search(line):
        return False
    return bool(_INTRO.match(line) or _LOOKS_DATED.search(line))


def _is_header_block(scan: str, start: int) -> bool:
    """True when the lines from `start` are a copied header block: a From line plus a Sent/Date
    line, or a From line plus To and Subject lines, with nothing else between them, naming an
    address or a time of day."""
    kinds: set[str] = set()
    position = start
    for _ in range(MAX_BLOCK_LINES):
        end = scan.find("\n", position)
        if end == -1:
            end = len(scan)
        if scan[position:end].strip(" \t>*"):
            match = _BLOCK_LINE.match(scan, position, end)
            if match is None:
                break
            kinds.add(_LABEL_KIND[match.group(1).lower()])
        position = end + 1
        if position >= len(scan):
            break
    if not ("from" in kinds and ("date" in kinds or {"to", "subject"} <= kinds)):
        return False
    # A copied header names an address or a time of day, or follows a separator line ("-----
    # Forwarded message -----", Outlook's "_____"); "From: Lisbon / To: Porto / Subject: office
    # move" in a request does none of these.
    block = scan[start : min(position, start + MAX_BLOCK_CHARS)]
    if "@" in block or _TIME_OF_DAY.search(block) is not None:
        return True
    before = scan[max(0, start - MAX_BLOCK_CHARS) : start].rstrip()
    return _RULE_LINE.match(before, before.rfind("\n") + 1) is not None


def _next_line_is_quoted(scan: str, position: int) -> bool:
    """True when the first non-empty line after `position` starts with `>`."""
    return scan[position : position + 2000].lstrip(" \t\n").startswith(">")


INTRO, WEAK_INTRO, CUT = "intro", "weak", "cut"


def _attribution_at(scan: str, colon: re.Match[str]) -> tuple[int, int, str] | None:
    """The intro candidate for a line ending in ":" (at `colon`), or None."""
    start = _line_start(scan, colon.start())
    if not _WROTE_WORD.search(scan, max(start, colon.start() - 120), colon.start()):
        # No "wrote": a Yandex/Mail.ru style "date, name <address>:" line, or nothing.
        if _DATED_ADDRESS.match(scan, start, colon.end()):
            kind = INTRO
        elif scan.find("@", start, colon.start()) != -1:
            kind = WEAK_INTRO
        else:
            return None
        return start, colon.end(), kind
    line = scan[start : colon.end()]
    previous_start = _line_start(scan, max(0, start - 1))
    previous = scan[previous_start : max(previous_start, start - 1)]
    if previous and _INTRO.match(previous) and _is_attribution(previous + " " + line):
        # "On Wed, … Jane Doe <" + "jane@acme.example> wrote:": wrapped by the sender's client.
        return previous_start, colon.end(), INTRO
    if _is_attribution(line):
        return start, colon.end(), INTRO
    if _WROTE_AT_END.search(line):
        # "Matthias wrote:" alone could be prose; it introduces a quote only when one follows.
        return start, colon.end(), WEAK_INTRO
    return None


def _first_cut(scan: str) -> int | None:
    """The start of the first separator line or copied header block, or None."""
    cuts = []
    # Lines that start like a separator or a header block but are none are looked at up to
    # MAX_CANDIDATES times: each costs a detailed match (ten lines for a header block).
    if _SEPARATOR_MARKERS.search(scan):
        for match in itertools.islice(_SEPARATOR_START.finditer(scan), MAX_CANDIDATES):
            if _SEPARATOR.match(_line_at(scan, match.start() + 1)):
                cuts.append(match.start() + 1)
                break
    if _FROM_MARKERS.search(scan):
        for match in itertools.islice(_BLOCK_START.finditer(scan), MAX_CANDIDATES):
            if _is_header_block(scan, match.start() + 1):
                cuts.append(match.start() + 1)
                break
    return min(cuts, default=None)


def _thread_starts(scan: str) -> list[tuple[int, int, str]]:
    """Where the thread may begin: (line start, end of the marker, kind), in text order.

    `INTRO` is an attribution line, `WEAK_INTRO` a line ending in ":" with an address that only
    counts when quoted lines follow it, `CUT` a separator or a copied header block.
    """
    found: list[tuple[int, int, str]] = []
    for colon in _COLON_AT_EOL.finditer(scan):
        candidate = _attribution_at(scan, colon)
        if candidate is not None:
            found.append(candidate)
            if len(found) >= MAX_CANDIDATES:
                break
    cut = _first_cut(scan)
    if cut is not None:
        found.append((cut, cut, CUT))
    found.sort()
    return found


def strip_thread(text: str) -> tuple[str, str]:
    """`text` without the quoted thread, and the start of a forwarded or copied original.

    The thread is cut at its start and `>` lines are dropped. An attribution line directly
    followed by `>` lines introduces an inline quote (the reply may continue below it), so only
    that line is dropped. When the thread starts with a separator or a copied header block, its
    first lines are returned too (for reading the original's sender), else "".
    """
    scan = "\n" + text[:MAX_SCAN_CHARS] + "\n"
    cut = len(scan)
    original = ""
    intros: list[tuple[int, int]] = []
    for start, end, kind in _thread_starts(scan):
        if intros and start < intros[-1][1]:
            continue
        if kind != CUT and _next_line_is_quoted(scan, end):
            intros.append((start, end))
            continue
        if kind == WEAK_INTRO:
            continue
        cut = start
        if kind == CUT:
            original = "\n".join(scan[cut : cut + MAX_ORIGINAL_CHARS].split("\n")[:40])
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
    return body.strip("\n"), original


def is_signature_line(line: str) -> bool:
    """Short and not a sentence: a name, a title, a number, or a `|`-separated contact line."""
    if line.endswith("?"):
        return False
    if "|" in line or "•" in line or "·" in line:
        return len(line) < 160
    return len(line) < 80 and len(line.split()) <= 8


def _is_short_signature(lines: list[str]) -> bool:
    """True when the lines after a valediction look like a signature, not more message."""
    filled = [line.strip() for line in lines if line.strip()]
    return len(filled) <= MAX_SIGNATURE_LINES and all(map(is_signature_line, filled))


def _mobile_footer(lines: list[str]) -> int | None:
    """The index of a phone or webmail footer line among `lines`, or None."""
    tail = "\n".join(lines).lower()
    if not any(marker in tail for marker in _MOBILE_MARKERS):
        return None  # the common case, decided by a few substring searches in C
    for index, line in enumerate(lines):
        if line.lstrip(" \t>").lower().startswith(_MOBILE_FOOTERS):
            return index
    return None


def _valediction(lines: list[str]) -> int | None:
    """The index of the last valediction line among `lines`, or None."""
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if len(line) > 40:
            continue
        phrase = " ".join(line.lower().replace(",", " ").replace("!", " ").split()).strip(".")
        if phrase in _VALEDICTIONS:
            return index
    return None


def split_signature(text: str) -> tuple[str, str]:
    """Split text into the body and its signature block.

    The signature starts at a "-- " delimiter, at a phone footer ("Sent from my iPhone"), or at
    the last valediction that is followed only by a few short lines (a name, a title, a phone).
    Footers and valedictions are looked for among the last lines only.
    """
    scan = "\n" + text + "\n"
    signature: list[str] = []
    match = _SIGNATURE_DELIMITER.search(scan)
    # A delimiter on the first line would leave no body at all: that is not a signature.
    if match is not None and scan[: match.start()].strip():
        signature = [scan[match.end() :].strip("\n")]
        scan = scan[: match.start()]
    head, *tail = scan.strip("\n").rsplit("\n", TAIL_LINES)
    lines = [head, *tail]  # only `tail` is searched; `head` is the start of the text
    footer = _mobile_footer(tail)
    if footer is not None:
        signature = lines[footer + 2 :] + signature
        del lines[footer + 1 :]
    found = _valediction(lines[1:])
    if found is not None:
        index = found + 1
        if _is_short_signature(lines[index + 1 :]):
            signature = [line.strip() for line in lines[index + 1 :] if line.strip()] + signature
            del lines[index:]
    return "\n".join(lines).strip("\n"), "\n".join(signature).strip()


class Reply(NamedTuple):
    """A message text split up: what is new, the signature, and the start of a forwarded or
    copied original ("" when there is none)."""

    text: str
    signature: str
    original: str


# -- legal disclaimers ----------------------------------------------------------------------
#
# A confidentiality footer is often longer than the message above it, and says nothing about
# what the sender wants. It is cut when a line near the end opens like one ("This e-mail and
# any attachments …", "Diese E-Mail enthält …", "本メールは …") AND what follows names two of
# confidentiality, the intended recipient, deletion (one alone is a request: "This email is to
# ask for a quote for confidential shredding"), AND some text comes before it: "This email is
# to ask for a quote" at the top of a message is the message.

DISCLAIMER_SCAN_CHARS = 4000  # disclaimers close a message; only its end is searched


def _openers() -> tuple[str, ...]:
    """How disclaimers begin, lower-case (each `a|b` expands to both)."""
    stems = (
        "this e-mail|this email|this message|this communication|this transmission"
        "|the information contained in|the information in|confidentiality|confidential"
        "|disclaimer|privileged|important notice|notice:|if you are not|if you have received"
        "|please consider the environment|diese e-mail|diese email|diese nachricht"
        "|vertraulichkeit|haftungsausschluss|hinweis:|ce message|ce courriel|ce e-mail|ce mail"
        "|avertissement|avis de confidentialit|este mensaje|este correo|este e-mail|este email"
        "|aviso legal|aviso de confidencialidad|la información|la informacion|questo messaggio"
        "|questa e-mail|questa email|il presente messaggio|le informazioni contenute"
        "|dit bericht|dit e-mailbericht|dit emailbericht|deze e-mail|de informatie"
        "|esta mensagem|este e-mail|aviso de confidencialidade|a informação|ta wiadomość"
        "|niniejsza wiadomość|informacje zawarte|detta e-postmeddelande|detta meddelande"
        "|detta e-post|informationen i|denne e-mail|denne e-post|denne meddelelse"
        "|denne meldingen|tämä sähköposti|tämä viesti|tato zpráva|tento e-mail|tento email"
        "|bu e-posta|bu eposta|bu mesaj|본 메일|이 메일은|本メール|このメール|このメッセージ"
        "|本邮件|此邮件|本郵件|此郵件|免责声明|免責聲明|免責事項|※本メール|※このメール"
    )
    return tuple(stems.split("|"))


_DISCLAIMER_OPENERS = _openers()
_LINE_LEAD = " \t>*_=-"
_DISCLAIMER_WORDS = re.compile(
    r"confidential|intended (?:recipient|solely|only)|privileged|vertraulich|empfänger"
    r"|confidentiel|destinataire|confidencial|destinatario|riservat|vertrouwelijk|geadresseerde"
    r"|poufn|adresat|konfidentiell|sekretess|mottagare|fortrolig|modtager|konfidensiell"
    r"|luottamuksellinen|vastaanottaja|důvěrn|adresát|gizli|alıcı|기밀|수신자|機密|秘密|保密|机密"
    r"|宛先|收件人|削除|删除|刪除|environment|addressee|adressat|destinatário|privilegiad"
    r"|irrtümlich|disclaimer|in error|por engano|por error|par erreur|per errore|ten onrechte",
    # matched against the lower-cased text: IGNORECASE would lose the engine's fast search
)
MIN_DISCLAIMER_WORDS = 2  # different words of _DISCLAIMER_WORDS in a disclaimer
MIN_WORDS_BEFORE_DISCLAIMER = 3
# The start of the text up to the first character of its MIN_WORDS_BEFORE_DISCLAIMER-th word.
_FIRST_WORDS = re.compile(rf"\s*+(?:\S++\s++){{{MIN_WORDS_BEFORE_DISCLAIMER - 1}}}\S")


def _last_disclaimer_start(text: str, start: int) -> int:
    """The last position from which `text` holds MIN_DISCLAIMER_WORDS different disclaimer
    words (searched from `start`, once), or -1."""
    found = [(match.start(), match[0].lower()) for match in _DISCLAIMER_WORDS.finditer(text, start)]
    words: set[str] = set()
    for position, word in reversed(found):
        words.add(word)
        if len(words) >= MIN_DISCLAIMER_WORDS:
            return position
    return -1


def cut_disclaimer(text: str) -> tuple[str, str]:
    """(`text` without a closing legal disclaimer, the disclaimer) — ("", "") parts when none."""
    start = max(0, len(text) - DISCLAIMER_SCAN_CHARS)
    tail = text[start:]
    lowered = tail.lower()
    if len(lowered) != len(tail):  # a character whose lower case is longer: offsets would move
        lowered = tail
    # A disclaimer opens a line: the lines are checked with `startswith` and a tuple (in C);
    # one regular expression over the text would cost ten times more (no literal prefix).
    openers = []
    offset = 0
    for line in itertools.islice(lowered.split("\n"), MAX_CANDIDATES):
        if line.lstrip(_LINE_LEAD).startswith(_DISCLAIMER_OPENERS):
            openers.append(offset)
        offset += len(line) + 1
    if not openers:
        return text, ""
    # Where enough words precede a disclaimer, and up to where enough disclaimer words follow,
    # each found once: searching again for each candidate would cost the text's length times
    # the candidates.
    words = _FIRST_WORDS.match(text)
    last = _last_disclaimer_start(lowered, 0)
    if words is None or last < 0:
        return text, ""
    for here in openers:
        if words.end() <= start + here and here <= last:
            return text[: start + here].rstrip(), text[start + here :].strip()
    return text, ""


def new_text(text: str) -> Reply:
    """The new text of a message (no thread, no legal disclaimer, no signature), its signature
    block and the start of a forwarded original."""
    body, original = strip_thread(text)
    body, _disclaimer = cut_disclaimer(body)
    body, signature = split_signature(body)
    return Reply(_BLANK_RUNS.sub("\n\n", body).strip(), signature, original)
