"""One SMTP connection to the configured server, sending in two phases for every outbound mail.

Replies, digests and alerts all go through `SmtpConnection`: `begin` gives the envelope (MAIL
FROM, RCPT TO), DATA and the whole message *except the final "."*; `commit` writes the dot and
reads the server's answer. Until the dot the server discards the message if we die or the
connection drops, so the delivery queue records `sending` between the two phases and the window in
which a crash leaves a mail "maybe delivered" is only the server's answer to the dot.

Errors are sorted by what they mean for the message: `SendError` (not delivered, try again
later), `ConnectionLostError` (not delivered, and this connection is gone), `PermanentError` (the
server said 5xx: never), `AmbiguousDeliveryError` (the connection broke after the dot: the server
may or may not have the message).
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from triage.core.errors import AuthenticationError, PermanentError, SendError, TriageError
from triage.core.hosts import tls_context as client_tls_context
from triage.core.settings import SmtpSettings
from triage.ingest.oauth.tokens import oauthbearer_response, xoauth2_response

if TYPE_CHECKING:
    from triage.ingest.oauth.tokens import TokenProvider

log = logging.getLogger(__name__)


class ConnectionLostError(SendError):
    """Raised when the connection broke before the final dot: nothing delivered, safe to retry."""


class AmbiguousDeliveryError(TriageError):
    """Raised when the connection broke after the final dot: the server may have the message."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A recipient the server refused at RCPT TO while it accepted others, and why."""

    recipient: str
    error: TriageError

    @property
    def permanent(self) -> bool:
        """A 5xx: this recipient never gets the message; otherwise try it again later."""
        return isinstance(self.error, PermanentError)


class SmtpSession(Protocol):
    """What the delivery queue needs from an open SMTP connection (the real one or a double)."""

    def begin(self, sender: str, recipients: Sequence[str], raw: bytes) -> list[Refused]:
        """Envelope, DATA and the content without the final dot; returns the recipients the
        server refused (it accepted at least one). Raises SendError, ConnectionLostError or
        PermanentError; nothing is delivered until `commit`."""
        ...

    def commit(self) -> None:
        """The final dot and the server's answer: returns when the server took the message.
        Raises SendError/PermanentError when it refused it, AmbiguousDeliveryError when the
        connection broke without an answer."""
        ...

    def abort(self) -> None:
        """Drop the connection without the final dot: the server discards the message. The
        session is unusable afterwards."""
        ...

    def close(self) -> None:
        """QUIT (or just close when the connection is already gone)."""
        ...


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """The TLS context of `[smtp]`: certificates verified (with the optional CA file) unless
    explicitly switched off."""
    if not settings.verify_certificates:
        log.warning("SMTP certificate verification is off for %s", settings.host)
    return client_tls_context(settings.ca_file, settings.verify_certificates)


def refusal(stage: str, code: int, reply: bytes | str) -> TriageError:
    """The error for the server's answer `code` at `stage`: 5xx PermanentError, 421 (closing)
    and -1 (no answer at all) ConnectionLostError, any other SendError."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"SMTP {stage} refused: {code} {' '.join(text.split())}"[:500]
    if 500 <= code <= 599:
        return PermanentError(message)
    return ConnectionLostError(message) if code in (421, -1) else SendError(message)


_EOL = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def dot_stuffed(raw: bytes) -> bytes:
    """The message as SMTP DATA carries it (RFC 5321 4.5.2): CRLF line ends, a leading "." on a
    line doubled, ending with CRLF — everything but the final ".\\r\\n"."""
    data = _LEADING_DOT.sub(b"..", _EOL.sub(b"\r\n", raw))
    return data if data.endswith(b"\r\n") else data + b"\r\n"


class SmtpConnection:
    """An open, authenticated connection sending in two phases; `connect` builds it."""

    def __init__(self, client: smtplib.SMTP, host: str) -> None:
        self._client = client
        self._host = host

    def begin(self, sender: str, recipients: Sequence[str], raw: bytes) -> list[Refused]:
        """MAIL FROM, RCPT TO each recipient, DATA and the content without the final dot."""
        if not recipients:
            raise PermanentError("no recipients: nothing to send")
        client = self._client
        refused: dict[str, TriageError] = {}
        try:
            code, reply = client.mail(sender)
            if code != 250:
                self._reset()
                raise refusal("MAIL FROM", code, reply)
            for rcpt in recipients:
                code, reply = client.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = refusal(f"RCPT TO <{rcpt}>", code, reply)
            if len(refused) == len(recipients):
                self._reset()
                transient = [e for e in refused.values() if not isinstance(e, PermanentError)]
                raise (transient or list(refused.values()))[0]
            client.putcmd("data")
            code, reply = client.getreply()
            if code != 354:
                self._reset()
                raise refusal("DATA", code, reply)
            client.send(dot_stuffed(raw))
        except UnicodeEncodeError:
            # smtplib speaks ASCII commands; internationalised addresses would need SMTPUTF8.
            self._reset()
            raise PermanentError(
                f"non-ASCII address in {sender!r} or {list(recipients)}: not supported"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise ConnectionLostError(f"SMTP connection to {self._host} lost: {exc}") from None
        for error in refused.values():
            log.warning("%s", error)
        return [Refused(rcpt, error) for rcpt, error in refused.items()]

    def commit(self) -> None:
        """The final dot; the server's 250 means it took responsibility for the message."""
        try:
            self._client.send(b".\r\n")
            code, reply = self._client.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            raise AmbiguousDeliveryError(
                f"SMTP connection to {self._host} broke after the message: {exc}"
            ) from None
        if code == -1:
            raise AmbiguousDeliveryError(f"SMTP {self._host} sent no reply after the message")
        if code != 250:
            raise refusal("message", code, reply)

    def abort(self) -> None:
        """Close without the final dot: the server discards the half-sent message."""
        self._client.close()

    def _reset(self) -> None:
        # RSET after a refusal; a failure here only means the connection is gone, which the next
        # step reports.
        try:
            self._client.rset()
        except (smtplib.SMTPException, OSError):
            log.debug("RSET failed on %s", self._host)

    def close(self) -> None:
        """QUIT, or drop the socket when the server is already gone."""
        try:
            self._client.quit()
        except (smtplib.SMTPException, OSError):
            self._client.close()


def open_client(
    settings: SmtpSettings,
    local_hostname: str | None = None,
    tokens: TokenProvider | None = None,
) -> smtplib.SMTP:
    """A connected, greeted and (when a username is set) logged-in smtplib client: implicit TLS,
    STARTTLS (never falling back to clear text) or plain, certificates verified unless configured
    off; with `tokens`, signed in by OAuth2 (AUTH XOAUTH2) instead of a password. Raises
    SendError when the server cannot be reached, AuthenticationError on a refused login, and the
    token provider's TokenUnavailable or ReauthorisationNeeded."""
    helo = local_hostname or socket.gethostname()  # getfqdn() may wait on DNS
    # The token first: a credential waiting for a person (or an endpoint that is down) fails
    # here, without a connection to the server at every delivery pass.
    token = tokens.access_token().token if tokens is not None else None
    client: smtplib.SMTP
    try:
        if settings.security == "tls":
            client = smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                local_hostname=helo,
                timeout=settings.timeout,
                context=tls_context(settings),
            )
        else:
            client = smtplib.SMTP(
                settings.host, settings.port, local_hostname=helo, timeout=settings.timeout
            )
    except (smtplib.SMTPException, OSError) as exc:
        raise SendError(
            f"cannot connect to SMTP {settings.host}:{settings.port}: {_describe(exc)}"
        ) from None
    try:
        _start(client, settings, tokens, token)
    except BaseException:
        client.close()
        raise
    return client


def connect(
    settings: SmtpSettings,
    local_hostname: str | None = None,
    tokens: TokenProvider | None = None,
) -> SmtpConnection:
    """Open a connection as configured (see `open_client`) for the delivery queue."""
    client = open_client(settings, local_hostname, tokens)
    return SmtpConnection(client, f"{settings.host}:{settings.port}")


def _start(
    client: smtplib.SMTP,
    settings: SmtpSettings,
    tokens: TokenProvider | None = None,
    token: str | None = None,
) -> None:
    where = f"{settings.host}:{settings.port}"
    try:
        client.ehlo()
        if settings.security == "starttls":
            if not client.has_extn("starttls"):
                # Never fall back to clear text when encryption was asked for.
                raise SendError(f"SMTP {where} does not offer STARTTLS")
            client.starttls(context=tls_context(settings))
            client.ehlo()
        if tokens is not None:
            _oauth2_login(client, settings, tokens, token)
        elif settings.username:
            client.login(settings.username, settings.secret())
    except smtplib.SMTPAuthenticationError as exc:
        raise AuthenticationError(
            f"SMTP {where} rejected the login of {settings.username}: {exc.smtp_code}"
        ) from None
    except smtplib.SMTPNotSupportedError:
        raise AuthenticationError(f"SMTP {where} does not offer AUTH") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise SendError(f"SMTP {where}: {_describe(exc)}") from None


def _oauth2_login(
    client: smtplib.SMTP, settings: SmtpSettings, tokens: TokenProvider, token: str | None = None
) -> None:
    """AUTH with the configured mechanism (XOAUTH2 unless `oauth2.mechanism` says OAUTHBEARER)
    and the token (`token`, else the provider's) as initial response; a refused token is
    refreshed and tried once more. Raises smtplib's SMTPAuthenticationError (the server's code
    only)."""
    if not client.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("AUTH")
    try:
        _sasl(client, settings, token or tokens.access_token().token)
    except smtplib.SMTPAuthenticationError:
        log.info("SMTP refused the access token of %s; asking for a new one", settings.username)
        _sasl(client, settings, tokens.access_token(force=True).token)


def _sasl(client: smtplib.SMTP, settings: SmtpSettings, token: str) -> None:
    user = settings.username
    if settings.oauth2 is not None and settings.oauth2.mechanism == "oauthbearer":
        mechanism = "OAUTHBEARER"
        initial = oauthbearer_response(user, token, settings.host, settings.port).decode("ascii")
    else:
        mechanism = "XOAUTH2"
        initial = xoauth2_response(user, token).decode("ascii")
    answered = False

    def answer(challenge: bytes | None = None) -> str:
        # The first call gives the initial response; a 334 after it carries the server's
        # error report, which RFC 7628 asks the client to acknowledge with an empty line.
        nonlocal answered
        if not answered:
            answered = True
            return initial
        return ""

    client.auth(mechanism, answer, initial_response_ok=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed ({exc.verify_message})"
    return str(exc) or type(exc).__name__
