"""Values a stranger wrote, on their way to sales staff: a sender address that smuggles mailto
parameters, a website that is a script, text that hides or reorders itself with invisible
characters. None of them may become a link, or reach staff unchanged, in the digest, the
hot-lead alert, `triage leads list` or the CSV export.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.test_digest import MONDAY_8, SATURDAY, FakeSmtp, parts
from tests.test_leads import Store, make_settings
from tests.test_leads_cli import triage, write_config
from triage.core.models import Address, Classification, Contact, InboundMessage, Verdict
from triage.core.sanitize import is_addr_spec
from triage.core.settings import Settings, load_settings
from triage.parsing.contacts import extract
from triage.pipeline import Recorder, decide
from triage.sales import digest
from triage.sales.leads import export_rows, write_csv
from triage.store.leads import find_leads, get_lead, lead_notes

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

PAYLOAD = "jane@acme.example?bcc=attacker%40evil.example&body=Our bank details changed"
RAW = (
    f'From: "Jane" <{PAYLOAD}>\r\n'
    "To: sales@example.test\r\n"
    "Subject: Quote for 40 pallet racks\r\n"
    "Message-ID: <hostile-1@acme.example>\r\n"
    "Date: Mon, 13 May 2024 07:00:00 +0000\r\n"
    "\r\n"
    "We need a quote for 40 pallet racks, delivered before June.\r\n"
).encode()
RLO, ZWSP = "\u202e", "\u200b"
HIDDEN = f"Jane {RLO}eoD{ZWSP} Doe"  # shows as "Jane Doe Doe" reversed without the marks
INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path, leads={"alert_hot": True, "alert_recipients": ("bob@example.test",)}
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    yield s
    s.close()


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', html)


def record_as_the_pipeline_does(store: Store, raw: bytes) -> int:
    """Parse, decide (as a sales message the etiquette rules let through) and record `raw` with
    the pipeline's own `decide` and `Recorder`; returns the id of the lead it made."""
    store.ledger.record_seen("default", "INBOX", 1, [(1, "<hostile-1@acme.example>", False)])
    row = store.ledger.rows_for("default", "INBOX", 1, [1])[1].id

    def check(msg: InboundMessage) -> Verdict:
        return Verdict(may_reply=False, reasons=("test",), destination=msg.from_)

    def classify(msgs: object) -> list[Classification]:
        return [Classification("sales", 0.95, "sales", explanation=("quote",))]

    decided = decide([(row, raw, False)], check, classify, None)
    recorder = Recorder(
        store.ledger,
        lambda _c, _p: None,
        response_target=lambda at: at + timedelta(hours=4),
        assign_owner=lambda _c: "",
    )
    recorder.record(decided)
    [lead] = find_leads(store.db.reads)
    return lead.id


def rendered_everywhere(store: Store, settings: Settings, now: datetime) -> list[str]:
    """The digest (text, HTML) and the alert (subject, text, HTML) for the leads in `store`."""
    preview = digest.preview(settings, store.db, now)
    smtp = FakeSmtp()
    digest.run_digest_if_due(settings, store.db, now, connector=smtp)
    alerts = [m for m in smtp.messages() if str(m["Subject"]).startswith("Hot lead")]
    assert alerts, "no alert was sent"
    out = [preview.text, preview.html]
    for alert in alerts:
        out += [str(alert["Subject"]), *parts(alert)]
    return out


# --- sender addresses ----------------------------------------------------------------------------


def test_a_mailto_payload_in_from_is_not_stored_and_never_linked(
    store: Store, settings: Settings
) -> None:
    """The attack as reported: the lead is kept for a person, without the address, with a note
    saying why; neither the digest nor the alert carries the payload or a link built from it."""
    lead_id = record_as_the_pipeline_does(store, RAW)
    lead = get_lead(store.db.reads, lead_id)
    assert lead is not None and lead.kind == "hot"
    assert lead.email == "" or (is_addr_spec(lead.email) and "bcc" not in lead.email)
    assert "bcc" not in lead.company.lower() and "?" not in lead.company
    notes = lead_notes(store.db.reads, lead_id)
    assert any("not a valid address" in n.text for n in notes), notes

    now = datetime.now(UTC)
    for part in rendered_everywhere(store, settings, now):
        assert "bcc=" not in part and "attacker" not in part and "bank details" not in part
        for href in hrefs(part):
            assert "?" not in href and "bcc" not in href, href


@pytest.mark.parametrize(
    "address",
    [
        PAYLOAD,
        "jane@acme.example?subject=Invoice",
        "jane@acme.example#x",
        '"jane doe"@acme.example',
        "jane@acme.example>, <evil@evil.example",
        "jane@acme.example\r\nBcc: evil@evil.example",
        "javascript:alert(1)//@acme.example",
        "jane@localhost",
    ],
)
def test_record_lead_stores_only_an_addr_spec(store: Store, address: str) -> None:
    """The store's single entry point refuses an address that is not a plain `local@domain`,
    whoever calls it; the lead itself is kept."""
    _, lead_id = store.inquiry(Contact("Jane", address, "Acme"))
    lead = get_lead(store.db.reads, lead_id)
    assert lead is not None and lead.email == "" and lead.name == "Jane"
    assert any("not a valid address" in n.text for n in lead_notes(store.db.reads, lead_id))


def test_a_clean_address_is_stored_and_joins_the_lead(store: Store) -> None:
    """A valid address is kept (lower-cased) and a second message from it joins the lead; no
    note is added."""
    _, first = store.inquiry(Contact("Jane", "Jane+Sales@Acme.example"))
    _, second = store.inquiry(Contact("Jane", "jane+sales@acme.example"))
    lead = get_lead(store.db.reads, first)
    assert first == second and lead is not None and lead.email == "jane+sales@acme.example"
    assert lead_notes(store.db.reads, first) == []


def test_a_form_email_field_that_is_not_an_address_is_ignored() -> None:
    """A web form's "Email:" value is the lead's address only when it is a plain addr-spec."""
    robot = Address("Website", "noreply@forms.example")
    body = "Name: Jane Doe\nCompany: Acme\nEmail: {}\nMessage: Quote for 40 racks\n"
    bad = extract(robot, (), body.format("jane@acme_corp.example"))
    assert bad.email == "" and bad.name == "Jane Doe"
    smuggled = extract(robot, (), body.format("jane@acme.example?bcc=attacker@evil.example"))
    assert smuggled.email in ("", "jane@acme.example")
    good = extract(robot, (), body.format("jane@acme.example"))
    assert good.email == "jane@acme.example"


def test_a_header_address_that_is_not_an_addr_spec_gives_no_contact_email() -> None:
    """The sender's own address is checked too, and no company is guessed from its "domain"."""
    contact = extract(Address("Jane", PAYLOAD.replace(" ", "").lower()))
    assert contact.email == "" and contact.company == ""


# --- mailto links --------------------------------------------------------------------------------


def test_mailto_links_are_percent_encoded(store: Store, settings: Settings) -> None:
    """Characters an addr-spec may hold but a URL treats specially are percent-encoded."""
    store.inquiry(Contact("Jane", "jane+sales@acme.example"), at=MONDAY_8 - timedelta(hours=1))
    store.inquiry(Contact("Pat", "o'brien=1@acme.example"), at=MONDAY_8 - timedelta(hours=1))
    html = digest.preview(settings, store.db, MONDAY_8).html
    mailtos = [h for h in hrefs(html) if h.startswith("mailto:")]
    assert "mailto:jane%2Bsales@acme.example" in mailtos
    assert "mailto:o%27brien%3D1@acme.example" in mailtos


def test_a_stored_invalid_address_is_shown_as_text(store: Store, settings: Settings) -> None:
    """A lead recorded before addresses were checked keeps its value, but as escaped text."""
    _, lead_id = store.inquiry(Contact("", "jane@acme.example"), at=MONDAY_8 - timedelta(hours=1))
    with store.db.transaction() as c:
        c.execute("UPDATE leads SET email = ? WHERE id = ?", ('x@y.example?to=a"<b>', lead_id))
    html = digest.preview(settings, store.db, MONDAY_8).html
    assert not [h for h in hrefs(html) if h.startswith("mailto:")]
    assert "x@y.example?to=a&#34;&lt;b&gt;" in html and '"<b>' not in html


# --- websites ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "website",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "mailto:evil@evil.example",
        "vbscript:msgbox",
        "https://",
        "https://acme.example@evil.example/",
        "//evil.example/x",
        "ftp://acme.example/",
        "acme.example<script>",
        'https://acme.example/"onmouseover="alert(1)',
    ],
)
def test_only_http_websites_become_links(store: Store, settings: Settings, website: str) -> None:
    """Anything but an http(s) URL with a plain host is not a link."""
    store.inquiry(Contact("Jane", "jane@acme.example", website=website))
    html = digest.preview(settings, store.db, MONDAY_8).html
    links = [h for h in hrefs(html) if not h.startswith("mailto:")]
    assert links == [], links
    assert "<script>" not in html and 'onmouseover="' not in html


def test_a_website_link_shows_its_host(store: Store, settings: Settings) -> None:
    """`https://acme.example/path` is linked, with the host as the link's text."""
    store.inquiry(Contact("Jane", "jane@acme.example", website="https://acme.example/path?q=1"))
    html = digest.preview(settings, store.db, MONDAY_8).html
    assert re.search(r'<a href="https://acme.example/path\?q=1"[^>]*>acme.example</a>', html), html
    assert ">https://acme.example/path" not in html


def test_a_bare_domain_website_is_linked_over_https(store: Store, settings: Settings) -> None:
    """Signatures often give just `www.acme.example`: linked as https, shown as the host."""
    store.inquiry(Contact("Jane", "jane@acme.example", website="www.acme.example"))
    html = digest.preview(settings, store.db, MONDAY_8).html
    assert re.search(r'<a href="https://www.acme.example"[^>]*>www.acme.example</a>', html)


# --- invisible characters ------------------------------------------------------------------------


# SQLite only: the CLI half runs `triage leads` on a configuration file naming a SQLite store.
@pytest.mark.sqlite_only
def test_invisible_characters_reach_no_staff_view(
    tmp_path: Path, store: Store, settings: Settings
) -> None:
    """A name, company and subject with a right-to-left override and a zero-width space show
    without them in the digest, the alert, `triage leads list` and the CSV export."""
    contact = Contact(HIDDEN, "jane@acme.example", f"Acme{ZWSP} {RLO}Corp", "", "acme.example")
    at = SATURDAY - timedelta(minutes=5)
    store.inquiry(contact, f"Quote {RLO}fdp.exe{ZWSP}", f"Body {RLO}text", at=at)
    for part in rendered_everywhere(store, settings, SATURDAY):
        assert not INVISIBLE.search(part), repr(part)
        assert "Jane eoD Doe" in part, part

    buffer = io.StringIO(newline="")
    write_csv(export_rows(store.db), buffer)
    [row] = list(csv.DictReader(io.StringIO(buffer.getvalue(), newline="")))
    assert not any(INVISIBLE.search(value) for value in row.values()), row
    assert row["name"] == "Jane eoD Doe" and row["company"] == "Acme Corp"

    config = write_config(tmp_path)
    assert load_settings(config, environ={}).store.path == settings.store.path
    for args in (("leads", "list"), ("leads", "list", "--json"), ("leads", "show", "1")):
        result = triage(config, *args)
        assert result.returncode == 0, result.stderr
        assert "Jane eoD Doe" in result.stdout and not INVISIBLE.search(result.stdout), args
    exported = triage(config, "leads", "export")
    assert exported.returncode == 0 and not INVISIBLE.search(exported.stdout)


# --- the rest of what a prospect writes ----------------------------------------------------------


def test_the_digest_html_is_autoescaped(store: Store, settings: Settings) -> None:
    """Subject, company, name, phone and snippet are text in every template, never markup."""
    markup = '<a href="https://evil.example">click</a>'
    store.inquiry(
        Contact(markup, "jane@acme.example", markup, markup, ""),
        markup,
        markup,
        at=SATURDAY - timedelta(minutes=5),
    )
    html = [part for part in rendered_everywhere(store, settings, SATURDAY) if "<html" in part]
    assert len(html) == 2  # the digest's and the alert's
    for part in html:
        assert "https://evil.example" not in hrefs(part)
        assert '<a href="https://evil.example">' not in part
        assert "&lt;a href=&#34;https://evil.example&#34;&gt;click&lt;/a&gt;" in part


@pytest.mark.parametrize(
    "value", ["=HYPERLINK(1)", f"{ZWSP}=HYPERLINK(1)", "\tx", "\rx", "@SUM(1)"]
)
def test_excel_safe_export_defuses_a_formula_hidden_behind_invisible_characters(
    store: Store, value: str
) -> None:
    """A formula prefixed with a zero-width space still starts with `=` once that is removed:
    the export removes it first, then defuses."""
    store.inquiry(Contact(value, "x@y.example"))
    buffer = io.StringIO(newline="")
    write_csv(export_rows(store.db), buffer, excel_safe=True)
    [row] = list(csv.DictReader(io.StringIO(buffer.getvalue(), newline="")))
    assert row["name"] == "'" + value.replace(ZWSP, "")
