"""Contact extraction for leads: headers, signature blocks and web-form notifications.

Every message here is written by hand for the project.
"""

from __future__ import annotations

import pytest

from triage.core.models import Address, Contact
from triage.parsing import parse
from triage.parsing.contacts import company_from_domain, extract, is_free_mail


def message(sender: bytes, body: str, extra_headers: bytes = b"") -> bytes:
    return (
        b"From: "
        + sender
        + b"\nTo: info@stretchpak.example\nSubject: Inquiry\n"
        + extra_headers
        + b"Content-Type: text/plain; charset=utf-8\n\n"
        + body.encode()
    )


def test_pipe_separated_signature() -> None:
    """A one-line signature "Name | Title | Company | Phone | Website" fills every field."""
    raw = message(
        b"Jane Doe <jane.doe@acme-logistics.example>",
        "Hello,\n\nplease send a quote for the SW-300.\n\n"
        "Best regards,\n"
        "Jane Doe | Head of Ops | Acme GmbH | +49 30 1234567 | www.acme.example\n",
    )
    assert parse(raw).contact == Contact(
        name="Jane Doe",
        email="jane.doe@acme-logistics.example",
        company="Acme GmbH",
        phone="+49 30 1234567",
        website="www.acme.example",
    )


def test_multi_line_signature_with_labels() -> None:
    """A multi-line block after "-- " with Tel:/Mob:/W: labels and a legal form."""
    raw = message(
        b'"Mustermann, Max" <m.mustermann@muster-maschinenbau.example>',
        "Guten Tag,\n\nbitte um ein Angebot für 3 Wickelmaschinen.\n\n"
        "-- \n"
        "Max Mustermann\n"
        "Leiter Einkauf\n"
        "Muster Maschinenbau GmbH\n"
        "Industriestraße 5, 80331 München\n"
        "Tel: +49 (0)89 123 456-7\n"
        "Mob: 0171 2345678\n"
        "W: https://www.muster-maschinenbau.example\n",
    )
    contact = parse(raw).contact
    assert contact.name == "Max Mustermann"  # "Last, First" from the directory turned around
    assert contact.email == "m.mustermann@muster-maschinenbau.example"
    assert contact.company == "Muster Maschinenbau GmbH"
    assert contact.phone == "+49 (0)89 123 456-7"
    assert contact.website == "https://www.muster-maschinenbau.example"


def test_signature_with_title_then_company_without_legal_form() -> None:
    """ "Title | Company" without a legal form: the piece after the title is the company."""
    raw = message(
        b"Olu Adebayo <olu@crestline-bev.example>",
        "Hi, do you have videos of the wrapper running?\n\nThanks,\nOlu\n\n"
        "--\nOlu Adebayo\nWarehouse Supervisor | Crestline Beverages\n"
        "T: +1 555 201 3344\ncrestline-bev.example\n",
    )
    contact = parse(raw).contact
    assert contact.company == "Crestline Beverages"
    assert contact.phone == "+1 555 201 3344"
    assert contact.website == "crestline-bev.example"


def test_french_signature_after_valediction() -> None:
    """A French block after "Cordialement," with Tél : and a SAS company."""
    raw = message(
        b"Pierre Martin <p.martin@emballages-martin.example>",
        "Bonjour,\n\nnous souhaitons un devis pour 500 rouleaux.\n\n"
        "Cordialement,\nPierre Martin\nResponsable achats\nEmballages Martin SAS\n"
        "Tél : +33 1 23 45 67 89\n",
    )
    contact = parse(raw).contact
    assert contact.name == "Pierre Martin"
    assert contact.company == "Emballages Martin SAS"
    assert contact.phone == "+33 1 23 45 67 89"


def test_company_from_domain_as_last_resort() -> None:
    """Without a signature the company comes from the corporate email domain."""
    contact = parse(message(b"Bob <bob@northwind-traders.example>", "Send prices.\n")).contact
    assert contact == Contact(
        name="Bob", email="bob@northwind-traders.example", company="Northwind Traders"
    )


@pytest.mark.parametrize(
    "address",
    [b"someone@gmail.com", b"x@yahoo.co.uk", b"y@hotmail.de", b"z@web.de", b"w@outlook.fr"],
)
def test_no_company_for_free_mail(address: bytes) -> None:
    """Free-mail domains (gmail, yahoo, hotmail, web.de, …) never become a company."""
    assert parse(message(address, "Hello, price please.\n")).contact.company == ""


def test_domain_helpers() -> None:
    """company_from_domain handles country second levels; is_free_mail knows provider families."""
    assert company_from_domain("mail.acme.co.uk") == "Acme"
    assert company_from_domain("acme-corp.example") == "Acme Corp"
    assert company_from_domain("localhost") == ""
    assert is_free_mail("googlemail.com") and is_free_mail("yahoo.fr")
    assert not is_free_mail("acme.example")


FORM = """You have a new contact form submission:

Name: Sofia García
Company: Logística Ibérica S.L.
Email: sofia.garcia@logistica-iberica.example
Phone: +34 912 345 678
Website: https://logistica-iberica.example
Message: We need a quote for 4 semi-automatic wrappers.
"""


def test_web_form_notification_takes_the_prospect_not_the_robot() -> None:
    """A website form sent by a no-reply robot: the prospect is the form's Email field."""
    raw = message(b"WordPress <wordpress@stretchpak.example>", FORM)
    assert parse(raw).contact == Contact(
        name="Sofia García",
        email="sofia.garcia@logistica-iberica.example",
        company="Logística Ibérica S.L.",
        phone="+34 912 345 678",
        website="https://logistica-iberica.example",
    )


def test_german_form_with_reply_to_and_split_name() -> None:
    """German labels (Vorname/Nachname/Firma/Telefon); without an Email field the Reply-To is
    the prospect, never the form's no-reply sender."""
    body = (
        "Neue Anfrage über das Kontaktformular\n\nVorname: Lena\nNachname: Schmidt\n"
        "Firma: Schmidt & Söhne KG\nTelefon: 0711 9876543\nNachricht: Bitte Rückruf.\n"
    )
    raw = message(
        b"Kontaktformular <noreply@stretchpak.example>",
        body,
        b"Reply-To: Lena Schmidt <lena@schmidt-soehne.example>\n",
    )
    contact = parse(raw).contact
    assert contact.name == "Lena Schmidt"
    assert contact.email == "lena@schmidt-soehne.example"
    assert contact.company == "Schmidt & Söhne KG"
    assert contact.phone == "0711 9876543"


def test_french_form_forwarded_by_a_colleague() -> None:
    """A form forwarded by a colleague: the form's fields, not the colleague, are the lead."""
    body = (
        "Voir ci-dessous.\n\n---------- Forwarded message ---------\n"
        "From: Formulaire <no-reply@forms.example>\n\n"
        "Nom : Claire Dubois\nSociété : Transports Dubois SARL\n"
        "Courriel : claire@transports-dubois.example\nTéléphone : +33 4 72 00 11 22\n"
    )
    contact = parse(message(b"Tom Sales <tom@stretchpak.example>", body)).contact
    assert contact.name == "Claire Dubois"
    assert contact.email == "claire@transports-dubois.example"
    assert contact.company == "Transports Dubois SARL"
    assert contact.phone == "+33 4 72 00 11 22"


def test_robot_sender_without_alternative_gives_no_email() -> None:
    """A no-reply sender is never recorded as the prospect's address."""
    contact = extract(Address("Notifications", "noreply@saas.example"), (), "Your invoice.", "")
    assert contact.email == ""


def test_plain_sender_without_signature() -> None:
    """With nothing but the From header, name and address come from it."""
    contact = extract(Address("Ann Lee", "ann@lee-partners.example"))
    assert contact == Contact(
        name="Ann Lee", email="ann@lee-partners.example", company="Lee Partners"
    )


def test_mailing_list_link_is_not_a_website() -> None:
    """A list's management URL in a footer is not the sender's website."""
    contact = extract(
        Address("A", "a@b.example"),
        (),
        "",
        "Irish Linux Users' Group\nhttp://www.linux.ie/mailman/listinfo/ilug",
    )
    assert contact.website == ""


FORWARDED = """FYI, lead from the trade fair - can we answer today?

---------- Forwarded message ---------
From: Jane Doe <jane@acme-logistics.example>
Date: Wed, Jun 5, 2024 at 2:58 PM
Subject: SW-300 quote
To: Tom <tom@stretchpak.example>

Hello Tom, please send a quote for two SW-300.

Jane
"""


def test_internal_forward_is_the_original_senders_lead() -> None:
    """A colleague forwarding a customer's mail to the shared mailbox (same domain): the
    prospect is the forwarded message's sender, read from its header block."""
    msg = parse(message(b"Tom Sales <tom@stretchpak.example>", FORWARDED))
    assert msg.contact.email == "jane@acme-logistics.example"
    assert msg.contact.name == "Jane Doe"
    assert msg.contact.company == "Acme Logistics"
    assert msg.new_text == "FYI, lead from the trade fair - can we answer today?"


def test_internal_outlook_forward() -> None:
    """An Outlook-style copied header block ("[mailto:…]") forwarded within the company."""
    body = (
        "-----Original Message-----\nFrom: Jane Doe [mailto:jane@acme-logistics.example]\n"
        "Sent: Wednesday, June 5, 2024 2:58 PM\nTo: Sales\nSubject: quote\n\nPrices please.\n"
    )
    contact = parse(message(b"Tom <tom@stretchpak.example>", body)).contact
    assert contact.email == "jane@acme-logistics.example"


def test_bounce_quoting_the_original_is_not_a_lead() -> None:
    """A mailer daemon quoting the message it could not deliver gives no prospect address."""
    body = (
        "Unable to deliver message.\n\n--- Original message follows.\n\n"
        "From: Tom <tom@stretchpak.example>\nTo: jane@acme-logistics.example\n"
        "Date: Wed, 5 Jun 2024 14:58:02 +0000\nSubject: Your quote\n\nHello\n"
    )
    contact = parse(message(b"MAILER-DAEMON@mx.example", body)).contact
    assert contact.email == ""


def test_external_forward_keeps_the_sender() -> None:
    """A customer forwarding something to us is still the prospect, not whoever they quote."""
    msg = parse(message(b"Bob <bob@northwind-traders.example>", FORWARDED))
    assert msg.contact.email == "bob@northwind-traders.example"


def test_department_sender_takes_the_signatures_person() -> None:
    """A department mailbox ("Global Procurement - Packaging") signed by a person: the person's
    name, and a "Title, Company Ltd" line gives the company without the title."""
    raw = message(
        b'"Global Procurement - Packaging" <procurement@alvora.example>',
        "Please quote for the attached RFP.\n\nKind regards,\n\nHelena Byrne\n"
        "Category Manager, Alvora Beverages Ltd\nWhatsApp/WeChat: +44 20 7946 0958\n",
    )
    contact = parse(raw).contact
    assert contact.name == "Helena Byrne"
    assert contact.company == "Alvora Beverages Ltd"
    assert contact.phone == "+44 20 7946 0958"


def test_display_name_with_company_suffix() -> None:
    """ "Amy Zhao - Hengda Fitness" as a display name is the person "Amy Zhao"."""
    contact = extract(Address("Amy Zhao - Hengda Fitness", "amy@hengda.example"))
    assert contact.name == "Amy Zhao"


def test_institution_without_legal_form() -> None:
    """A university or association in the signature is the organisation."""
    raw = message(
        b"Prof. Ingrid Vos <i.vos@lab.univ-gent.example>",
        "Could we discuss a joint project?\n\nKind regards,\nProf. Ingrid Vos\n"
        "Polymer Processing Lab\nGhent University\n",
    )
    assert parse(raw).contact.company == "Ghent University"


@pytest.mark.parametrize(
    "field",
    [
        "finance@third.example, mia@third.example",
        "noah@third.example%0D%0ABcc: olga@third.example",
        "olga@third.example?bcc=attacker@evil.example&body=hi",
        "write to olga@third.example please",
    ],
)
def test_form_email_field_must_be_one_plain_address(field: str) -> None:
    """A field that is not exactly one address is somebody steering the reply: not taken."""
    raw = message(
        b"WordPress <wordpress@stretchpak.example>",
        FORM.replace("sofia.garcia@logistica-iberica.example", field),
    )
    assert "third.example" not in parse(raw).contact.email


def test_an_html_form_table_with_labels_above_values_gives_the_visitor() -> None:
    """Gravity Forms and others put each label in a table row above its value: as text, a
    label line and a value line. The visitor's name, address and company are read from it."""
    from triage.parsing.htmltext import to_text

    table = "".join(
        f"<tr><td><b>{label}</b></td></tr><tr><td>{value}</td></tr>"
        for label, value in [
            ("Name", "Pat Prospect"),
            ("Email", "pat@client.example"),
            ("Company", "Acme Pumps"),
            ("Message", "Please quote 40 pumps."),
        ]
    )
    text = to_text(f"<p>New submission from Contact</p><table>{table}</table>")
    contact = extract(Address("WordPress", "wordpress@example.test"), (), text, from_html=True)
    assert (contact.name, contact.email, contact.company) == (
        "Pat Prospect",
        "pat@client.example",
        "Acme Pumps",
    )


def test_stacked_labels_are_only_read_in_html_text() -> None:
    """In a plain-text message a line "Email" above an address is prose, not a form field."""
    text = "Thanks for the call.\n\nEmail\n\nsomeone@else.example\n\nBest, Pat"
    contact = extract(Address("Pat", "pat@client.example"), (), text)
    assert contact.email == "pat@client.example"
