"""Who the prospect is: name, email, company, phone and website for a lead.

Sources, strongest first: the fields of a website contact-form notification (whose own sender is
a no-reply robot, not the prospect), the sender's signature block, and the From/Reply-To headers
(or, for a mail a colleague forwarded within the company, the forwarded original's sender), with
the company derived from a corporate email domain as a last resort. Everything here is a pure
function of values `triage.parsing` has already read.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from triage.core.models import Address, Contact
from triage.core.sanitize import is_addr_spec

MAX_TEXT = 20_000
MAX_FORM_LINES = 300  # labelled lines looked at
MAX_TOKEN = 80  # a longer piece of a signature is prose, not a name, title or number
MAX_SIGNATURE = 1500


def _word_set(words: str) -> frozenset[str]:
    """A set of words written as one space-separated string (easier to read and extend)."""
    return frozenset(words.split())


_FORM_LABELS = {
    "name": "name|full name|your name|contact name|contact|ansprechpartner|nom|nom complet"
    "|votre nom|nombre|nombre completo|naam|nome|nome e cognome|name und vorname",
    "first": "first name|vorname|prénom|prenom|nombre de pila|voornaam",
    "last": "last name|surname|family name|nachname|nom de famille|apellido|apellidos"
    "|achternaam|cognome",
    "company": "company|company name|organisation|organization|business|firma|firmenname"
    "|unternehmen|société|societe|entreprise|empresa|bedrijf|bedrijfsnaam|azienda"
    "|ragione sociale",
    "email": "email|e-mail|email address|e-mail address|your email|e-mail-adresse"
    "|e-mail adresse|courriel|adresse e-mail|adresse email|correo|correo electrónico"
    "|e-mailadres|indirizzo email|indirizzo e-mail",
    "phone": "phone|phone number|telephone|tel|tel.|telefon|telefonnummer|téléphone|teléfono"
    "|telefono|telefoon|telefoonnummer|mobile|mobil|handy|cell",
    "website": "website|web site|web|webseite|homepage|url|site web|site internet|sitio web"
    "|sito web|sito",
}
_FORM_LABEL_KIND = {
    label: kind for kind, labels in _FORM_LABELS.items() for label in labels.split("|")
}

_EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d ()./-]{5,22}\d(?![\w])")
_PHONE_LABEL = re.compile(
    r"^(?:tel|tél|phone|telephone|téléphone|telefon|telefono|teléfono|telefoon|fon|mob|mobile"
    r"|mobil|handy|cell|direct|office|fax|t|m|p|d|o)\.?[ \t]*:?[ \t]*",
    re.IGNORECASE,
)
_WEBSITE_LABEL = re.compile(r"^(?:w|web|website|webseite|homepage|site|url|internet)\s*:\s*", re.I)
_URL = re.compile(r"(?:https?://|www\.)[^\s<>()|,;\"']+", re.IGNORECASE)
_BARE_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+([a-z]{2,12})", re.IGNORECASE)
_LIST_URL_WORDS = ("listinfo", "mailman", "unsubscribe", "optout", "opt-out", "/lists/")
# File names and abbreviations that look like domains.
_NOT_TLDS = _word_set("pdf doc docx xls xlsx jpg jpeg png gif txt zip htm html eg ie")
# Legal forms name a company on their own; generic business words only in a proper name.
_LEGAL_FORMS = _word_set(
    "gmbh ag kg ohg ug gbr e.k ltd limited llc l.l.c inc corp corporation co company plc"
    " sa sas sarl bv b.v nv n.v sl s.l spa s.p.a srl s.r.l oy ab a/s aps pty"
)
_BUSINESS_WORDS = _word_set(
    "group gruppe groupe holding industries technologies solutions systems services"
    " partners consulting logistics manufacturing trading association verein stiftung"
    " foundation university universität université universidad università college institute"
    " institut agency agentur"
)
_TITLE_WORDS = _word_set(
    "head manager director ceo cto cfo coo founder co-founder owner president vp lead"
    " officer engineer supervisor buyer purchasing procurement einkauf einkäufer"
    " geschäftsführer geschäftsführerin leiter leiterin inhaber inhaberin vertrieb"
    " responsable directeur directrice gérant gerente jefe jefa hoofd eigenaar inkoper"
    " responsabile titolare coordinator specialist consultant assistant analyst partner"
    " associate administrator architect developer sales marketing operations logistics"
    " account executive representative agent secretary chair"
)
_NOT_PERSON_WORDS = _TITLE_WORDS | _word_set(
    "team department support office info service desk abteilung équipe equipo customer"
)
_WORD_SPLIT = re.compile(r"[\s,()]+")
# Pipes, bullets, spaced dashes, and the wide gaps of two-column signatures.
_SEPARATORS = re.compile(r"[ \t]*[|•·][ \t]*|[ \t]+[–—-][ \t]+|[ \t]{3,}|\t")
_SEPARATOR_MARKS = ("|", "•", "·", " - ", " – ", " — ", "   ", "\t")
_PERSON_NAME = re.compile(r"^[A-ZÀ-Þ][\w'’.-]+(?:[ \t]+[A-ZÀ-Þ][\w'’.-]+){1,3}$")

_NO_REPLY = re.compile(
    r"^(?:no-?reply|do-?not-?reply|donotreply|noreply-\w+|mailer|wordpress|webmaster|forms?"
    r"|contact-?form|formular|notifications?|notify|www-data|apache|postmaster|bounce[s]?"
    r"|typeform|wufoo|hubspot|jotform|website)\b",
    re.IGNORECASE,
)

_FREE_MAIL_EXACT = _word_set(
    "gmail.com googlemail.com aol.com msn.com icloud.com me.com mac.com web.de"
    " t-online.de freenet.de arcor.de posteo.de mailbox.org orange.fr wanadoo.fr free.fr"
    " laposte.net sfr.fr neuf.fr libero.it virgilio.it alice.it tiscali.it tin.it"
    " proton.me pm.me mail.ru zoho.com qq.com 163.com 126.com hey.com ziggo.nl kpnmail.nl"
    " hetnet.nl planet.nl home.nl telefonica.net terra.es bluewin.ch rediffmail.com"
    " mail.com inbox.com gmx.com gmx.net"
)
_FREE_MAIL_FAMILY = _word_set(
    "yahoo ymail hotmail outlook live gmx yandex protonmail fastmail rocketmail aim"
)
_SECOND_LEVEL = _word_set("co com org net ac gov edu ne or")


def is_free_mail(domain: str) -> bool:
    """True for consumer mailbox providers, whose domain says nothing about the company."""
    domain = domain.lower().strip(".")
    if domain in _FREE_MAIL_EXACT:
        return True
    labels = domain.split(".")
    return len(labels) >= 2 and (labels[0] in _FREE_MAIL_FAMILY or labels[-2] in _FREE_MAIL_FAMILY)


def _is_robot(address: Address | None) -> bool:
    return address is not None and bool(_NO_REPLY.match(address.local_part))


def company_from_domain(domain: str) -> str:
    """A company name guessed from a corporate domain ("crestline-beverages.example" →
    "Crestline Beverages"); "" for free-mail providers and bare hosts."""
    domain = domain.lower().strip(".")
    if not domain or is_free_mail(domain):
        return ""
    labels = [label for label in domain.split(".") if label not in ("www", "mail", "email")]
    if len(labels) < 2:
        return ""
    index = -3 if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL and len(labels[-1]) == 2 else -2
    label = labels[index]
    return " ".join(part.capitalize() for part in label.replace("_", "-").split("-") if part)


def _form_fields(text: str, *, stacked: bool = False) -> dict[str, str]:
    """The labelled fields of a contact-form notification (first value of each kind); with
    `stacked`, also labels alone on a line above their value (an HTML table as text).

    Driven by the colons in the text (few) rather than by its lines (many).
    """
    found: dict[str, str] = {}
    colon = text.find(":")
    for _ in range(MAX_FORM_LINES):
        if colon == -1:
            break
        start = text.rfind("\n", 0, colon) + 1
        end = text.find("\n", colon)
        if end == -1:
            end = len(text)
        if colon - start <= 40:
            kind = _FORM_LABEL_KIND.get(text[start:colon].strip(" \t>*_").lower())
            value = text[colon + 1 : end].strip(" \t*_")
            if kind is not None and value and kind not in found:
                found[kind] = value[:200]
        colon = text.find(":", end)
    if stacked and len(found) < 2:
        _stacked_fields(text, found)
    if "name" not in found and ("first" in found or "last" in found):
        found["name"] = " ".join(found[key] for key in ("first", "last") if key in found)
    return found


# A label alone on its line and its value on the next non-empty one: what an HTML notification
# whose table puts each label in a row above its value (Gravity Forms, Elementor, HubSpot …)
# becomes as text. Only the first part of the text is read: form fields come first.
_STACKED_SCAN_CHARS = 6000
_STACKED = re.compile(
    r"^[ \t>*_]*("
    + "|".join(sorted((re.escape(label) for label in _FORM_LABEL_KIND), key=len, reverse=True))
    + r")[ \t*_]*:?[ \t]*\n(?:[ \t]*\n)*[ \t>]*([^\n]{1,200})$",
    re.IGNORECASE | re.MULTILINE,
)


def _stacked_fields(text: str, found: dict[str, str]) -> None:
    """Add to `found` the fields written as a label line followed by a value line."""
    head = text[:_STACKED_SCAN_CHARS]
    lowered = head.lower()
    if "mail" not in lowered and "name" not in lowered and "courriel" not in lowered:
        return  # no label worth the scan (every form asks for an address or a name)
    for match in itertools.islice(_STACKED.finditer(head), MAX_FORM_LINES):
        kind = _FORM_LABEL_KIND[match.group(1).lower()]
        value = match.group(2).strip(" \t*_")
        if value and kind not in found and value.lower() not in _FORM_LABEL_KIND:
            found[kind] = value[:200]


def _digits(text: str) -> int:
    return sum(map(str.isdigit, text))


def _phone(text: str) -> str:
    """The first phone-number-like run of digits in `text` (at least seven digits), or ""."""
    match = _PHONE.search(text)
    if match is None:
        return ""
    phone = " ".join(match.group(0).split())
    return phone if _digits(phone) >= 7 else ""


def _website(text: str) -> str:
    """The website in a short piece of text: a URL, a `www.` host or a bare domain, or ""."""
    text = _WEBSITE_LABEL.sub("", text.strip(), count=1)
    match = _URL.search(text)
    if match is not None:
        url = match.group(0).rstrip(".,;:)")
        # A mailing list's or a newsletter's management link is not the sender's website.
        return "" if any(word in url.lower() for word in _LIST_URL_WORDS) else url
    candidate = text.strip("<>()[] \t.,;")
    domain = _BARE_DOMAIN.fullmatch(candidate)
    if domain is not None and domain.group(1).lower() not in _NOT_TLDS:
        return candidate
    return ""


def _signature_tokens(signature: str) -> list[str]:
    """The pieces of a signature: its lines, with `|`/`•`-separated lines split further."""
    tokens: list[str] = []
    for raw_line in signature[:MAX_SIGNATURE].split("\n")[:15]:
        line = raw_line.strip().strip("*_>").strip()
        if not line or len(line) > 4 * MAX_TOKEN:
            continue  # empty, or prose rather than a signature line
        if len(line) <= MAX_TOKEN and not any(mark in line for mark in _SEPARATOR_MARKS):
            tokens.append(line)
        else:
            tokens.extend(token.strip() for token in _SEPARATORS.split(line) if token.strip())
    return [token for token in tokens if len(token) <= MAX_TOKEN]


def _words(token: str) -> set[str]:
    """The lower-cased words of a token without trailing dots ("Ltd." → "ltd", "B.V." → "b.v")."""
    return {word.strip(".") for word in _WORD_SPLIT.split(token.lower())}


def _is_company(token: str, words: set[str]) -> bool:
    """True for "Crestline Packaging Group" or "Ghent University", not for "systems and
    networks" (a proper name: capitalised, not ending in a lower-case word)."""
    last = token.rsplit(maxsplit=1)[-1:]
    return bool(words & _BUSINESS_WORDS) and token[:1].isupper() and not last[0].islower()


def _company_of(token: str) -> str:
    """The company in "Director, THT Plumbing & Heating Ltd" (a title before a comma)."""
    title, comma, rest = token.partition(", ")
    if comma and _words(title) & _TITLE_WORDS and not _words(title) & _LEGAL_FORMS:
        return rest
    return token


def _from_signature(signature: str, sender_name: str) -> Contact:
    """Name, company, phone and website read from a signature block.

    Each piece is classified by what it looks like: a labelled or digit-heavy piece is a phone,
    a URL or domain the website, a piece with a legal form (GmbH, Ltd, …) the company, a piece
    with a job word a title, a proper name with a business word (Group, University) a company.
    Failing those, the piece right after the title is taken as the company ("Warehouse
    Supervisor | Crestline Beverages"). A person's name must agree with `sender_name` if given.
    """
    name = company = after_title_company = phone = website = ""
    sender = sender_name.lower()
    after_title = False
    for token in _signature_tokens(signature):
        lowered = token.lower()
        digits = _digits(token)
        was_title, after_title = after_title, False
        if "@" in token and _EMAIL.search(token):
            continue
        if digits >= 7 and (len(token) < 30 or ":" in token or _PHONE_LABEL.match(token)):
            phone = phone or _phone(token)
            continue
        if not website and (found := _website(token)):
            website = found
            continue
        words = _words(token)
        if words & _LEGAL_FORMS:
            company = company or _company_of(token)
            continue
        if words & _TITLE_WORDS:
            after_title = True
            continue
        if _is_company(token, words):
            company = company or token
            continue
        if (
            not name
            and _PERSON_NAME.match(token)
            and (not sender or lowered in sender or sender in lowered)
        ):
            name = token
            continue
        if was_title and not digits and not after_title_company:
            after_title_company = token
    return Contact(name=name, company=company or after_title_company, phone=phone, website=website)


def _is_person(name: str) -> bool:
    """True for "Jane Doe", not for "Global Procurement" or "Sales Team"."""
    return bool(_PERSON_NAME.match(name)) and not _words(name) & _NOT_PERSON_WORDS


def _display_name(name: str) -> str:
    """A person's name from a display name: "Doe, Jane" → "Jane Doe", "Amy Zhao - Hengda" →
    "Amy Zhao"; a department name ("Global Procurement - Packaging") is returned as it is."""
    name = name.strip(" \"'")
    if name.count(",") == 1 and " " not in name.split(",")[1].strip():
        last, first = (part.strip() for part in name.split(","))
        return f"{first} {last}"  # how directories write "Jane Doe"
    for separator in (" - ", " | ", " / "):
        person = name.partition(separator)[0]
        if person != name and _is_person(person):
            return person
    return name


def forwarded_within_company(sender: Address | None, to: Sequence[Address]) -> bool:
    """True when a person wrote to an address of their own domain: a colleague forwarding mail
    to the shared mailbox, whose forwarded original (if any) is the real lead."""
    return (
        sender is not None
        and sender.domain != ""
        and not _is_robot(sender)
        and sender.domain in {address.domain for address in to}
    )


def _prospect(
    from_: Address | None,
    reply_to: Sequence[Address],
    to: Sequence[Address],
    forwarded_from: Address | None,
    is_form: bool,
) -> Address | None:
    """Who the message is from, as far as the lead is concerned.

    A robot sender (no-reply, form mailer) is never the prospect; its Reply-To is. A message a
    colleague forwarded within the company (sender and a recipient share a domain) is the
    original sender's. A robot's "forward" is not: that is a bounce quoting our own message.
    """
    sender = from_
    if reply_to and (sender is None or _is_robot(sender) or is_form):
        sender = reply_to[0]
    if sender is None or _is_robot(sender):
        return None
    original = forwarded_from
    if (
        forwarded_within_company(sender, to)
        and original is not None
        and "@" in original.email
        and not _is_robot(original)
    ):
        return original
    return sender


def extract(
    from_: Address | None,
    reply_to: Sequence[Address] = (),
    text: str = "",
    signature: str = "",
    *,
    to: Sequence[Address] = (),
    forwarded_from: Address | None = None,
    from_html: bool = False,
) -> Contact:
    """The prospect's contact details from the headers, the signature and any form fields.

    `forwarded_from` is the sender of a forwarded original, when the text holds one;
    `from_html` says the text was converted from HTML (where a form's table may put each label
    on the line above its value).
    """
    text = text[:MAX_TEXT]
    form = _form_fields(text, stacked=from_html)
    is_form = (
        len(form.keys() & {"name", "company"}) >= 1 and len(form.keys() & {"email", "phone"}) >= 1
    )
    sender = _prospect(from_, reply_to, to, forwarded_from, is_form)
    # Only a plain addr-spec: the address becomes a mailto link and a lead's key, and a value
    # like "jane@acme.example?bcc=…" would smuggle recipients and text into both.
    email = sender.email if sender is not None and is_addr_spec(sender.email) else ""
    name = _display_name(sender.name) if sender is not None else ""
    if is_form:
        # The field must hold one plain address and nothing else: "a@x, b@y", "a@x%0D%0ABcc: …"
        # or "a@x?bcc=…" is somebody steering the reply, not a visitor's address.
        field = form.get("email", "").strip()
        field = field.removeprefix("mailto:").strip().removeprefix("<").removesuffix(">")
        if is_addr_spec(field):
            email = field
        name = form.get("name", "") or name
        signed = Contact()
    else:
        # A department or mailbox name ("Global Procurement") does not have to match the
        # signature's person; a person's name does.
        person = name if _is_person(name) else ""
        signed = _from_signature(signature, person) if signature else Contact()
        name = signed.name if signed.name and not person else name
    company = form.get("company", "") if is_form else signed.company
    phone = _phone(form.get("phone", "")) if is_form else signed.phone
    website = _website(form.get("website", "")) if is_form else signed.website
    if not company and email:
        company = company_from_domain(email.rpartition("@")[2])
    return Contact(name=name, email=email, company=company, phone=phone, website=website)
