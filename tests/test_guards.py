"""The etiquette rules (RFC 3834 / RFC 5230): each rule alone, then how `check` combines them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest

from triage.core.models import Address, Attachment, Contact, InboundMessage
from triage.core.settings import RepliesSettings
from triage.decide.guards import (
    MIN_WINDOW,
    RULES,
    GuardContext,
    Route,
    automated_reason,
    canonical,
    check,
    is_do_not_reply,
    route,
)

OURS = "hello@example.com"


@dataclass
class FakeHistory:
    """A reply history with fixed answers that remembers what it was asked."""

    recent: set[str] = field(default_factory=set)
    asked: list[tuple[str, timedelta]] = field(default_factory=list)

    # Replies to senders our server authenticated; `recent` holds those to unverified ones.
    verified_recent: set[str] = field(default_factory=set)

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        """As the outbox: a verified sender is blocked only by replies to verified senders."""
        self.asked.append((address, window))
        return address in self.verified_recent or (not verified and address in self.recent)


def make_msg(**changes: Any) -> InboundMessage:
    """A plain inquiry from a person, delivered to hello@example.com, that may be answered."""
    base = InboundMessage(
        message_id="<inquiry-1@client.example>",
        subject="Quote for 40 units",
        from_=Address("Pat Prospect", "pat@client.example"),
        to=(Address("", OURS),),
        return_path="<pat@client.example>",
        headers={"from": "Pat Prospect <pat@client.example>", "subject": "Quote for 40 units"},
        contact=Contact(name="Pat Prospect", email="pat@client.example"),
    )
    headers = changes.pop("extra_headers", None)
    msg = replace(base, **changes)
    if headers:
        msg = replace(msg, headers={**msg.headers, **{k.lower(): v for k, v in headers.items()}})
    return msg


def make_ctx(**changes: Any) -> GuardContext:
    """The daemon's context for the default settings, with a history that has no replies."""
    ctx = GuardContext.from_settings(RepliesSettings(), FakeHistory())
    return replace(ctx, **changes)


MX = "mx.example.com"  # our receiving server's authserv-id in these tests


def authenticated(
    msg: InboundMessage, result: str = "dmarc=pass header.from=client.example"
) -> InboundMessage:
    """`msg` as our own server stamps it after checking its sender."""
    return replace(msg, auth_results=(f"{MX}; {result}", *msg.auth_results))


def trusting(**changes: Any) -> GuardContext:
    """The context of a daemon that believes the Authentication-Results of `MX`."""
    return make_ctx(trusted_authserv_ids=frozenset({MX}), **changes)


def rule_names(reasons: tuple[str, ...]) -> set[str]:
    return {r.split(":", 1)[0] for r in reasons}


# --- the baseline ---------------------------------------------------------------------------------


def test_plain_inquiry_may_be_answered_at_its_sender() -> None:
    """A person's mail to our address, with a Return-Path, and no history: reply to From —
    without its display name and without reflecting anything, as nobody vouched for the sender."""
    verdict = check(make_msg(), make_ctx())
    assert verdict.may_reply, verdict.reasons
    assert verdict.reasons == ()
    assert verdict.destination == Address("", "pat@client.example")
    assert not verdict.verified
    assert not verdict.reflect
    assert any(n.startswith("unauthenticated:") for n in verdict.notes)


def test_authenticated_sender_is_answered_by_name_and_may_be_reflected() -> None:
    """A DMARC pass from our own server for the From domain: reply to From, by name."""
    verdict = check(authenticated(make_msg()), trusting())
    assert verdict.may_reply, verdict.reasons
    assert verdict.destination == Address("Pat Prospect", "pat@client.example")
    assert verdict.verified
    assert verdict.reflect
    assert verdict.notes == ()


@pytest.mark.parametrize(
    "result",
    [
        "spf=pass smtp.mailfrom=bounces.client.example",
        "dkim=pass header.d=client.example",
        "dkim=pass header.i=@mail.client.example",
        "dmarc=pass (p=reject) header.from=client.example; spf=fail smtp.mailfrom=x.example",
    ],
)
def test_aligned_spf_or_dkim_authenticates_the_sender(result: str) -> None:
    """Without DMARC, an SPF or DKIM pass for a domain aligned with From's counts."""
    assert check(authenticated(make_msg(), result), trusting()).verified


@pytest.mark.parametrize(
    "result",
    [
        "dmarc=pass header.from=other.example",  # a pass for some other domain
        "dmarc=fail header.from=client.example; dkim=pass header.d=client.example",  # final
        "spf=pass smtp.mailfrom=attacker.example",  # not aligned
        "dkim=pass header.d=attacker.example",  # not aligned
        "dkim=pass header.d=example",  # a TLD is not an organisation
        "dkim=fail header.d=client.example",
        "none",
        "dmarc=pass (unclosed comment header.from=client.example",
    ],
)
def test_unaligned_or_failed_results_do_not_authenticate(result: str) -> None:
    """A pass for another domain, a failure, or an unreadable header leaves the sender
    unauthenticated: the reply goes to From with fixed text."""
    verdict = check(authenticated(make_msg(), result), trusting())
    assert not verdict.verified
    assert not verdict.reflect
    assert verdict.destination == Address("", "pat@client.example")


def test_only_our_own_topmost_authentication_results_count() -> None:
    """RFC 8601 5: a header with another authserv-id, or one with ours below our server's own,
    may be forged by the sender and is ignored."""
    forged_foreign = replace(
        make_msg(), auth_results=("mx.attacker.example; dmarc=pass header.from=client.example",)
    )
    assert not check(forged_foreign, trusting()).verified
    # Our server's real verdict on top says fail; a forged pass with our id sits below it.
    forged_below = replace(
        make_msg(),
        auth_results=(
            f"{MX}; dmarc=fail header.from=client.example",
            f"{MX}; dmarc=pass header.from=client.example",
        ),
    )
    assert not check(forged_below, trusting()).verified
    # Without a configured authserv-id nothing is believed at all.
    assert not check(authenticated(make_msg()), make_ctx()).verified


def test_two_from_fields_are_never_authenticated() -> None:
    """A message with two From fields may have been checked against the other one."""
    msg = replace(authenticated(make_msg()), from_count=2)
    assert not check(msg, trusting()).verified


def test_exchange_online_header_without_authserv_id() -> None:
    """Exchange Online writes no authserv-id; `exchange-online` makes its header count."""
    stamped = replace(
        make_msg(),
        auth_results=(
            "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=client.example; dkim=pass "
            "(signature was verified) header.d=client.example;dmarc=pass action=none "
            "header.from=client.example;compauth=pass reason=100",
        ),
    )
    assert check(stamped, make_ctx(trusted_authserv_ids=frozenset({"exchange-online"}))).verified
    assert not check(stamped, trusting()).verified


def test_reply_to_in_the_authenticated_domain_is_the_destination() -> None:
    """Reply-To names where the sender wants answers (RFC 5322 3.6.2): followed when it lies in
    the authenticated From domain."""
    msg = authenticated(make_msg(reply_to=(Address("Pat at sales", "sales@eu.client.example"),)))
    verdict = check(msg, trusting())
    assert verdict.destination == Address("Pat at sales", "sales@eu.client.example")
    assert verdict.reflect


def test_foreign_reply_to_is_never_the_destination() -> None:
    """From alice, Reply-To bob: bob gets nothing, authenticated or not; the note says why."""
    msg = make_msg(reply_to=(Address("BUY NOW http://spam.example", "bob@third.example"),))
    for verdict in (check(msg, make_ctx()), check(authenticated(msg), trusting())):
        assert verdict.destination is not None
        assert verdict.destination.email == "pat@client.example"
        assert any(n.startswith("reply-to-ignored:") for n in verdict.notes)


def test_unauthenticated_none_answers_only_authenticated_senders() -> None:
    """`replies.unauthenticated = "none"`: no reply unless our server vouched for the sender."""
    ctx = trusting(unauthenticated="none")
    assert rule_names(check(make_msg(), ctx).reasons) == {"unauthenticated"}
    assert check(authenticated(make_msg()), ctx).may_reply


def test_every_reason_is_returned_not_just_the_first() -> None:
    """A mailing-list bounce is refused for each rule it breaks, each reason named by its rule."""
    msg = make_msg(
        return_path="<>",
        from_=Address("", "mailer-daemon@mx.example"),
        contact=Contact(),
        extra_headers={"List-Id": "<x.lists.example>", "Precedence": "bulk"},
    )
    verdict = check(msg, make_ctx())
    assert not verdict.may_reply
    assert {
        "null-return-path",
        "list-header",
        "precedence",
        "do-not-reply-sender",
        "do-not-reply-destination",
    } <= rule_names(verdict.reasons)
    assert all(r.split(":", 1)[0] in {rule.name for rule in RULES} for r in verdict.reasons)


def test_rule_names_are_unique() -> None:
    """Reports group by rule name, so two rules must never share one."""
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))


# --- Return-Path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["<>", "", " < > "])
def test_null_return_path_is_never_answered(value: str) -> None:
    """An empty envelope sender marks a bounce or an automatic reply (RFC 3834 2)."""
    verdict = check(make_msg(return_path=value), make_ctx())
    assert rule_names(verdict.reasons) == {"null-return-path"}


def test_missing_return_path_blocks_in_the_daemon() -> None:
    """Delivered mail always carries Return-Path; without it the envelope sender is unknown."""
    verdict = check(make_msg(return_path=None), make_ctx())
    assert rule_names(verdict.reasons) == {"no-return-path"}


def test_missing_return_path_is_allowed_for_files() -> None:
    """A file or an APPENDed message has no Return-Path; `classify` switches the rule off."""
    ctx = GuardContext.from_settings(RepliesSettings(), None, require_return_path=False)
    assert check(make_msg(return_path=None), ctx).may_reply


# --- headers that mark machine mail ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["auto-replied", "auto-generated", "Auto-Notified; owner-email=x@y", "x-custom", ""]
)
def test_auto_submitted_other_than_no_is_refused(value: str) -> None:
    """RFC 3834 5: every Auto-Submitted value except `no` means a machine sent the message."""
    verdict = check(make_msg(extra_headers={"Auto-Submitted": value}), make_ctx())
    assert rule_names(verdict.reasons) == {"auto-submitted"}


@pytest.mark.parametrize("value", ["no", "No", " no ; comment"])
def test_auto_submitted_no_is_a_person(value: str) -> None:
    """`Auto-Submitted: no` is explicitly not automatic."""
    assert check(make_msg(extra_headers={"Auto-Submitted": value}), make_ctx()).may_reply


@pytest.mark.parametrize(
    "header",
    [
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Post",
        "List-Help",
        "List-Subscribe",
        "List-Owner",
        "List-Archive",
        "Mailing-List",
        "X-Mailman-Version",
        "X-BeenThere",
        "X-ML-Name",
    ],
)
def test_any_list_header_is_refused(header: str) -> None:
    """Mail from a list (RFC 2369/2919) goes to many people; we never answer a list."""
    verdict = check(make_msg(extra_headers={header: "<x>"}), make_ctx())
    assert rule_names(verdict.reasons) == {"list-header"}
    assert header.lower() in verdict.reasons[0].lower()


@pytest.mark.parametrize("value", ["bulk", "junk", "list", "auto_reply", "BULK", "Auto-Reply"])
def test_bulk_precedence_is_refused(value: str) -> None:
    """Precedence bulk/junk/list/auto_reply is how bulk and automatic mail labels itself."""
    verdict = check(make_msg(extra_headers={"Precedence": value}), make_ctx())
    assert rule_names(verdict.reasons) == {"precedence"}


def test_other_precedence_values_are_ignored() -> None:
    """`Precedence: first-class` (or normal) says nothing about automation."""
    assert check(make_msg(extra_headers={"Precedence": "first-class"}), make_ctx()).may_reply


@pytest.mark.parametrize("value", ["All", "OOF", "AutoReply", "DR, OOF", "dr,rn,autoreply"])
def test_auto_response_suppress_is_honoured(value: str) -> None:
    """Microsoft's X-Auto-Response-Suppress asks for no out-of-office or automatic replies."""
    verdict = check(make_msg(extra_headers={"X-Auto-Response-Suppress": value}), make_ctx())
    assert rule_names(verdict.reasons) == {"auto-response-suppress"}


def test_auto_response_suppress_of_receipts_only_is_ignored() -> None:
    """DR/RN/NRN only concern delivery and read receipts, not replies."""
    msg = make_msg(extra_headers={"X-Auto-Response-Suppress": "DR, RN, NRN"})
    assert check(msg, make_ctx()).may_reply


@pytest.mark.parametrize(
    "header",
    ["X-Autoreply", "X-Autorespond", "X-AutoReply-From", "X-Mail-Autoreply", "X-Autogenerated"],
)
def test_autoresponder_headers_are_refused(header: str) -> None:
    """Vacation programs that predate RFC 3834 mark their mail with these headers."""
    verdict = check(make_msg(extra_headers={header: "yes"}), make_ctx())
    assert rule_names(verdict.reasons) == {"autoreply"}


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: Quote for 40 units",
        "Out of Office: back on Monday",
        "Out of office autoreply",
        "Autoreply: thanks",
        "Abwesenheitsnotiz: Angebot",
        "Réponse automatique : devis",
    ],
)
def test_autoreply_subjects_are_refused(subject: str) -> None:
    """Autoresponders that set no header still announce themselves in the subject."""
    verdict = check(make_msg(subject=subject), make_ctx())
    assert rule_names(verdict.reasons) == {"autoreply"}


def test_a_subject_merely_mentioning_the_office_is_a_person() -> None:
    """Only the autoresponders' fixed prefixes count, not words anywhere in a subject."""
    assert check(make_msg(subject="Out of office furniture: quote please"), make_ctx()).may_reply


# --- reports and bounces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("multipart/report; report-type=delivery-status; boundary=x", "delivery-status"),
        ('multipart/report; report-type="disposition-notification"', "disposition-notification"),
        ("multipart/report; report-type=feedback-report", "feedback-report"),
    ],
)
def test_multipart_report_is_refused(content_type: str, kind: str) -> None:
    """Delivery reports, read receipts and abuse reports (RFC 3464/8098/5965) are never answered."""
    msg = make_msg(content_type="multipart/report", extra_headers={"Content-Type": content_type})
    verdict = check(msg, make_ctx())
    assert rule_names(verdict.reasons) == {"report"}
    assert kind in verdict.reasons[0]


@pytest.mark.parametrize(
    "part", ["message/delivery-status", "message/disposition-notification", "text/rfc822-headers"]
)
def test_report_parts_are_refused(part: str) -> None:
    """A report part inside some other multipart is still a report."""
    msg = make_msg(attachments=(Attachment("", part, 200),))
    assert rule_names(check(msg, make_ctx()).reasons) == {"report"}


@pytest.mark.parametrize(
    "subject",
    [
        "Undelivered Mail Returned to Sender",
        "Delivery Status Notification (Failure)",
        "Mail delivery failed: returning message to sender",
        "Returned mail: see transcript for details",
        "Undeliverable: Quote for 40 units",
        "failure notice",
        "Fwd: Returned mail: see transcript for details",
    ],
)
def test_bounce_subjects_are_refused(subject: str) -> None:
    """Servers that send bounces as plain text still use these fixed subjects."""
    assert rule_names(check(make_msg(subject=subject), make_ctx()).reasons) == {"report"}


def test_x_failed_recipients_marks_a_bounce() -> None:
    """Exim names the failed recipients in X-Failed-Recipients on every bounce."""
    msg = make_msg(extra_headers={"X-Failed-Recipients": "nobody@client.example"})
    assert rule_names(check(msg, make_ctx()).reasons) == {"report"}


# --- senders that take no replies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "local",
    [
        "mailer-daemon",
        "MAILER-DAEMON",
        "postmaster",
        "post_master",
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "orders-noreply",
        "bounce",
        "bounces+12345",
        "bounce-abc-123",
        "owner-sales-list",
        "sales-list-request",
        "sales-list-bounces",
        "listserv",
        "majordomo",
        "notification",
        "notifications",
    ],
)
def test_do_not_reply_local_parts_are_refused(local: str) -> None:
    """These senders are robots or list software: a reply goes nowhere or to many."""
    addr = f"{local}@client.example"
    assert is_do_not_reply(addr)
    msg = make_msg(from_=Address("", addr), contact=Contact(email=addr))
    names = rule_names(check(msg, make_ctx()).reasons)
    assert names == {"do-not-reply-sender", "do-not-reply-destination"}


@pytest.mark.parametrize("local", ["pat", "owner", "requests", "notify.me", "bouncer", "replies"])
def test_people_are_not_mistaken_for_robots(local: str) -> None:
    """Only the listed patterns count; a person named like a role still gets an answer."""
    assert not is_do_not_reply(f"{local}@client.example")


def test_web_form_from_no_reply_with_a_person_in_reply_to_is_human_mail() -> None:
    """Contact forms send from no-reply@ with the visitor in Reply-To: that is an inquiry."""
    msg = make_msg(
        from_=Address("Website", "no-reply@forms.client.example"),
        reply_to=(Address("Pat", "pat@client.example"),),
        contact=Contact(),
    )
    assert automated_reason(msg) is None
    # Unauthenticated, the reply could only go to From, which takes none.
    assert rule_names(check(msg, make_ctx()).reasons) == {"do-not-reply-destination"}
    # Authenticated, a Reply-To in the same organisation's domain is followed.
    verdict = check(authenticated(msg, "dmarc=pass header.from=forms.client.example"), trusting())
    assert verdict.may_reply, verdict.reasons
    assert verdict.destination == Address("Pat", "pat@client.example")


def test_unconfigured_web_form_without_reply_to_is_not_answered() -> None:
    """Without Reply-To the reply would go to no-reply@; the form must be configured first."""
    msg = make_msg(
        from_=Address("Website", "no-reply@forms.client.example"),
        contact=Contact(name="Pat", email="pat@client.example"),
    )
    assert automated_reason(msg) is None  # the visitor's address shows a person wrote it
    verdict = check(msg, make_ctx())
    assert rule_names(verdict.reasons) == {"do-not-reply-destination"}


# --- configured web-form relays -------------------------------------------------------------------

FORM = "no-reply@forms.client.example"
RELAY_PASS = "dmarc=pass header.from=forms.client.example"  # the relay's own notification


@pytest.mark.parametrize("entry", [FORM, "@forms.client.example"])
def test_form_sender_reply_to_is_the_destination(entry: str) -> None:
    """A configured relay (address or @domain) hands the reply to the visitor in Reply-To."""
    msg = make_msg(
        from_=Address("Website", FORM),
        reply_to=(Address("Pat", "pat@client.example"),),
        contact=Contact(),
    )
    verdict = check(authenticated(msg, RELAY_PASS), trusting(form_senders=frozenset({entry})))
    assert verdict.may_reply, verdict.reasons
    # Whoever filled in the form typed the address: no name from it, nothing reflected.
    assert verdict.destination == Address("", "pat@client.example")
    assert not verdict.reflect


def test_form_sender_without_reply_to_uses_the_form_email_field() -> None:
    """Without Reply-To the visitor's address comes from the form's Email field."""
    msg = make_msg(
        from_=Address("Website", FORM), contact=Contact(name="Pat Doe", email="pat@client.example")
    )
    verdict = check(authenticated(msg, RELAY_PASS), trusting(form_senders=frozenset({FORM})))
    assert verdict.may_reply, verdict.reasons
    assert verdict.destination == Address("", "pat@client.example")
    assert not verdict.reflect


def test_form_sender_without_a_visitor_address_is_not_answered() -> None:
    """A form mail that names no visitor has nobody to answer."""
    msg = make_msg(from_=Address("Website", FORM), contact=Contact(email=FORM))
    verdict = check(msg, make_ctx(form_senders=frozenset({FORM})))
    assert verdict.destination is None
    assert "no-destination" in rule_names(verdict.reasons)


def test_form_visitor_address_gets_the_same_sender_rules() -> None:
    """A visitor who typed a no-reply address, or ours, is not answered either."""
    ctx = trusting(form_senders=frozenset({FORM}))
    robot = make_msg(from_=Address("W", FORM), contact=Contact(email="noreply@client.example"))
    robot = authenticated(robot, RELAY_PASS)
    assert "do-not-reply-destination" in rule_names(check(robot, ctx).reasons)
    us = make_msg(from_=Address("W", FORM), contact=Contact(email="Hello@Example.com"))
    assert rule_names(check(authenticated(us, RELAY_PASS), ctx).reasons) == {"own-address"}


def test_form_relay_may_send_as_our_own_address() -> None:
    """Websites often send form mail as hello@ourdomain with the visitor in Reply-To."""
    msg = make_msg(from_=Address("Website", OURS), reply_to=(Address("Pat", "pat@client.example"),))
    assert not check(msg, make_ctx()).may_reply  # unconfigured: our own address
    ours = authenticated(msg, "dmarc=pass header.from=example.com")
    verdict = check(ours, trusting(form_senders=frozenset({OURS})))
    assert verdict.may_reply, verdict.reasons


def test_invalid_destination_address_is_refused() -> None:
    """An address that could smuggle a header, or has no domain, is not replied to."""
    for bad in ["pat@client.example\r\nBcc: victim@example.test", "pat", "pat@localhost"]:
        msg = make_msg(from_=Address("", bad), contact=Contact())
        assert "no-destination" in rule_names(check(msg, make_ctx()).reasons), bad


# --- our own identity -----------------------------------------------------------------------------


def test_mail_from_our_own_address_is_not_answered() -> None:
    """Answering ourselves is the shortest mail loop."""
    msg = make_msg(from_=Address("Us", "Hello+Web@Example.COM"), contact=Contact())
    assert rule_names(check(msg, make_ctx()).reasons) == {"own-address"}


def test_reply_to_our_own_address_is_not_followed() -> None:
    """A Reply-To pointing at us would make us write to ourselves: the reply goes to From."""
    msg = make_msg(reply_to=(Address("", "no-reply@example.com"),))
    verdict = check(msg, make_ctx())
    assert verdict.destination == Address("", "pat@client.example")
    sender_is_us = make_msg(from_=Address("", "no-reply@example.com"))
    assert "own-address" in rule_names(check(sender_is_us, make_ctx()).reasons)


def test_our_own_message_id_domain_is_a_loop() -> None:
    """Our own reply coming back (forwarded, bounced by a bad autoresponder) is not answered."""
    msg = make_msg(message_id="<triage.0123456789abcdef01234567@example.com>")
    assert rule_names(check(msg, make_ctx()).reasons) == {"own-message-id"}


def test_an_answer_to_our_automatic_reply_is_left_to_people() -> None:
    """A message In-Reply-To one of our automatic replies is a conversation, not an inquiry."""
    msg = make_msg(in_reply_to="<triage.0123456789abcdef01234567@example.com>")
    assert rule_names(check(msg, make_ctx()).reasons) == {"own-message-id"}


def test_synthesised_message_id_on_our_domain_is_not_a_loop() -> None:
    """An id the parser invented says nothing about who sent the message."""
    msg = make_msg(message_id="<abc@example.com>", message_id_synthesised=True)
    assert check(msg, make_ctx()).may_reply


def test_x_loop_naming_us_is_a_loop() -> None:
    """Procmail and ticket systems add X-Loop with the address that processed the mail."""
    msg = make_msg(extra_headers={"X-Loop": "hello@example.com"})
    assert rule_names(check(msg, make_ctx()).reasons) == {"own-message-id"}


def test_mail_not_addressed_to_us_is_not_answered() -> None:
    """RFC 3834 3.1.1: a Bcc or a list copy (our address not in To/Cc) gets no reply."""
    msg = make_msg(to=(Address("", "someone@client.example"),))
    assert rule_names(check(msg, make_ctx()).reasons) == {"not-addressed-to-us"}


def test_cc_and_plus_detail_count_as_addressed_to_us() -> None:
    """Cc counts, and hello+web@ is still hello@."""
    cc = make_msg(to=(Address("", "x@client.example"),), cc=(Address("", OURS),))
    assert check(cc, make_ctx()).may_reply
    plus = make_msg(to=(Address("", "Hello+Web@example.com"),))
    assert check(plus, make_ctx()).may_reply


def test_addressed_to_us_can_be_switched_off() -> None:
    """`require_addressed_to_us = false` answers mail that reached us by Bcc or alias."""
    msg = make_msg(to=(Address("", "someone@client.example"),))
    assert check(msg, make_ctx(require_addressed_to_us=False)).may_reply


# --- rate limits ----------------------------------------------------------------------------------


def test_one_reply_per_sender_per_window() -> None:
    """RFC 5230 4.2: a sender answered within the window gets no second reply."""
    history = FakeHistory(recent={"pat@client.example"})
    msg = make_msg(from_=Address("Pat", "Pat+x@Client.example"))
    verdict = check(msg, make_ctx(history=history))
    assert rule_names(verdict.reasons) == {"already-replied"}
    assert history.asked == [("pat@client.example", timedelta(days=7))]


def test_window_is_at_least_one_day() -> None:
    """RFC 5230 4.1: a shorter configured window is raised to one day."""
    history = FakeHistory()
    check(make_msg(), make_ctx(history=history, window=timedelta(hours=1)))
    assert history.asked[0][1] == MIN_WINDOW


def test_window_counts_tag_case_and_gmail_dot_variants_as_one_address() -> None:
    """`+tag`, case and (for dotless domains) dots reach one mailbox: one window for all."""
    ctx = make_ctx(history=FakeHistory(recent={"janedoe@gmail.com"}))
    for variant in ("Jane.Doe+x@gmail.com", "j.a.n.e.d.o.e@googlemail.com", "JANEDOE@GMAIL.COM"):
        msg = make_msg(from_=Address("", variant), return_path=f"<{variant}>")
        assert "already-replied" in rule_names(check(msg, ctx).reasons), variant
    # Elsewhere a dot is significant.
    assert canonical("j.doe+x@client.example") == "j.doe@client.example"


def test_without_history_the_rate_rules_are_off() -> None:
    """`triage classify` on files has no outbox; the rate rules then say nothing."""
    ctx = make_ctx(history=None)
    assert check(make_msg(), ctx).may_reply


# --- settings and the classifier's subset ---------------------------------------------------------


def test_context_from_settings_knows_all_our_addresses() -> None:
    """From, envelope sender and the listed addresses are all ours; the id domain defaults to
    the From domain."""
    replies = RepliesSettings(
        from_address="Hello@Example.com",
        envelope_sender="bounces@example.com",
        our_addresses=("sales@example.com",),
        window_days=3,
        form_senders=(" Forms@Site.example ",),
        trusted_authserv_ids=(" MX.Example.com ",),
    )
    ctx = GuardContext.from_settings(replies, None)
    assert ctx.our_addresses == {"hello@example.com", "bounces@example.com", "sales@example.com"}
    assert ctx.message_id_domains == {"example.com"}
    assert ctx.window == timedelta(days=3)
    assert ctx.is_form_sender("forms@site.example")
    assert ctx.trusted_authserv_ids == {"mx.example.com"}
    own = RepliesSettings(message_id_domain="mail.example.net")
    assert GuardContext.from_settings(own, None).message_id_domains == {"mail.example.net"}


def test_canonical_addresses() -> None:
    """Case and +detail do not make a different person."""
    assert canonical(" Pat+News@Client.Example ") == "pat@client.example"
    assert canonical("nodomain") == "nodomain"


def test_automated_reason_names_machine_mail_only() -> None:
    """The classifier's subset: machine markers count, our context-dependent rules do not."""
    assert automated_reason(make_msg()) is None
    assert automated_reason(make_msg(return_path=None)) is None
    assert automated_reason(make_msg(to=(Address("", "x@y.example"),))) is None
    bounce = make_msg(subject="Undelivered Mail Returned to Sender")
    reason = automated_reason(bounce)
    assert reason is not None
    assert reason.startswith("report:")
    assert automated_reason(make_msg(extra_headers={"List-Id": "<l>"})) == (
        "list-header: mailing list header List-Id"
    )


def test_destination_without_any_sender() -> None:
    """A message without From or Reply-To has nobody to answer."""
    msg = make_msg(from_=None, contact=Contact())
    assert route(msg, make_ctx()).address is None
    assert "no-destination" in rule_names(check(msg, make_ctx()).reasons)


def test_a_trusted_dmarc_failure_anywhere_vetoes_a_pass() -> None:
    """A forged pass on top of our server's real failure (when the server strips nothing and
    the forger put theirs first) is not believed."""
    forged_on_top = replace(
        make_msg(),
        auth_results=(
            f"{MX}; dmarc=pass header.from=client.example",
            f"{MX}; dmarc=fail (p=reject) header.from=client.example",
        ),
    )
    verdict = check(forged_on_top, trusting())
    assert not verdict.verified
    assert any("conflicting results" in n for n in verdict.notes)


def test_from_with_several_mailboxes_or_a_group_is_not_answered() -> None:
    """`From: Team: a@x, b@y;` or `From: a@x, b@y` names nobody in particular."""
    msg = replace(make_msg(), from_single=False)
    verdict = check(msg, make_ctx())
    assert verdict.destination is None
    assert "no-destination" in rule_names(verdict.reasons)
    assert not check(authenticated(msg), trusting()).verified


def test_form_relay_must_be_authenticated() -> None:
    """A notification that merely claims to come from the form relay is not answered (anyone
    could pose as the form and pick the address); the relay's own one is, with fixed text."""
    form = make_msg(
        from_=Address("Website", FORM), contact=Contact(name="Pat", email="pat@client.example")
    )
    ctx = trusting(form_senders=frozenset({FORM}))
    assert "unauthenticated" in rule_names(check(form, ctx).reasons)
    real = authenticated(form, "dmarc=pass header.from=forms.client.example")
    verdict = check(real, ctx)
    assert verdict.may_reply, verdict.reasons
    assert verdict.destination == Address("", "pat@client.example")
    assert not verdict.reflect


def test_a_forged_fixed_text_reply_does_not_use_up_a_verified_senders_window() -> None:
    """Someone forges `jane.doe+promo@gmail.com` and gets a fixed-text reply (recorded as a
    reply to an unverified sender). Jane herself, authenticated, is still answered; anyone
    unauthenticated writing as Jane is not (the outbox implements the same split)."""
    history = FakeHistory(recent={"janedoe@gmail.com"})
    jane = make_msg(from_=Address("Jane", "Jane.Doe@gmail.com"), return_path="<j@gmail.com>")
    ctx = trusting(history=history, dotless_domains=frozenset({"gmail.com"}))
    assert check(authenticated(jane, "dmarc=pass header.from=gmail.com"), ctx).may_reply
    assert "already-replied" in rule_names(check(jane, ctx).reasons)
    # A reply to the verified Jane blocks both.
    history.verified_recent = {"janedoe@gmail.com"}
    verdict = check(authenticated(jane, "dmarc=pass header.from=gmail.com"), ctx)
    assert "already-replied" in rule_names(verdict.reasons)
    assert history.asked[-1][0] == "janedoe@gmail.com"


def test_hostile_authentication_results_cannot_crash_or_stall_the_check() -> None:
    """A comment before the authserv-id (RFC 8601 allows it), a header too long or with too
    many results to read, or more trusted headers than a server writes: never an exception,
    never verified by accident."""
    ok = "dmarc=pass header.from=client.example"
    commented = replace(make_msg(), auth_results=(f"(our gateway) {MX} 1; {ok}",))
    assert check(commented, trusting()).verified
    assert not check(replace(make_msg(), auth_results=("(x)", "()", "(", ";")), trusting()).verified
    long_one = replace(make_msg(), auth_results=(f"{MX}; {ok}; " + "x=y; " * 400,))
    assert not check(long_one, trusting()).verified
    many = replace(make_msg(), auth_results=(f"{MX}; {ok}",) * 6)
    assert "too many" in " ".join(check(many, trusting()).notes)
    cut = replace(make_msg(), auth_results=(f"{MX}; {ok}",), auth_results_cut=True)
    assert not check(cut, trusting()).verified


def test_alignment_follows_the_public_suffix_list() -> None:
    """`attacker.eu.org` is not `eu.org`'s organisation; `mail.acme.co.uk` is `acme.co.uk`'s."""
    from triage.decide.sender_auth import aligned

    assert aligned("mail.acme.co.uk", "acme.co.uk")
    assert not aligned("attacker.eu.org", "eu.org")
    assert not aligned("acme.co.uk", "other.co.uk")
    msg = make_msg(
        from_=Address("", "attacker@attacker.eu.org"),
        reply_to=(Address("", "hostmaster@eu.org"),),
    )
    verdict = check(authenticated(msg, "dmarc=pass header.from=attacker.eu.org"), trusting())
    assert verdict.destination == Address("", "attacker@attacker.eu.org")


def test_a_context_routes_each_kind_of_sender_once() -> None:
    """`for_route` gives the context for a route's kind of sender; asked again for the same
    kind it is the same context, and a context with another history routes afresh."""
    ctx = GuardContext(our_addresses=frozenset({"hello@example.test"}))
    plain = ctx.for_route(Route(Address("", "a@x.example")))
    verified = ctx.for_route(Route(Address("", "b@x.example"), verified=True, reflect=True))
    assert (plain.sender_verified, plain.recipient_verified) == (False, False)
    assert (verified.sender_verified, verified.recipient_verified) == (True, True)
    assert ctx.for_route(Route(Address("", "c@y.example"))) is plain
    assert plain.our_addresses == ctx.our_addresses
    other = replace(ctx, history=FakeHistory())
    assert other.for_route(Route(None)) is not plain
    assert other.for_route(Route(None)).history is other.history
