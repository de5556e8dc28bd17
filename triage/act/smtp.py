"""One SMTP connection to the configured server, in the steps the outbox needs to be crash-safe.

The outbox must record "sending" between the envelope (MAIL FROM, RCPT TO) and DATA, so the session
exposes those steps separately instead of smtplib's all-in-one `sendmail`. Errors are sorted by
what they mean for the message: `SendError` (try again later), `PermanentError` (the server said
5xx: never), `AmbiguousDeliveryError` (the connection broke after the message was handed over).
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from typing import Protocol

from triage.core.errors import AuthenticationError, PermanentError, SendError, TriageError
from triage.core.settings import SmtpSettings

log = logging.getLogger(__name__)


class ConnectionLostError(SendError):
    """Raised when the connection broke before the message was handed over: safe to retry."""


class AmbiguousDeliveryError(TriageError):
    """Raised when the connection broke after DATA: the server may or may not have the message."""


class SmtpSession(Protocol):
    """What the outbox needs from an open SMTP connection (the real one or a test double)."""

    def envelope(self, sender: str, recipient: str) -> None:
        """MAIL FROM and RCPT TO; raises SendError (4xx or connection lost) or PermanentError."""
        ...

    def data(self, raw: bytes) -> None:
        """DATA; raises SendError/PermanentError on a refusal, AmbiguousDeliveryError when the
        connection broke without a reply."""
        ...

    def reset(self) -> None:
        """RSET after a refused envelope, so the next message starts clean."""
        ...

    def close(self) -> None:
        """QUIT (or just close when the connection is already gone)."""
        ...


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """Certificate verification on (with the optional CA file) unless explicitly switched off."""
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.verify_certificates:
        log.warning("SMTP certificate verification is off for %s", settings.host)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _refusal(stage: str, code: int, reply: bytes | str) -> TriageError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"SMTP {stage} refused: {code} {' '.join(text.split())}"[:500]
    if 500 <= code <= 599:
        return PermanentError(message)
    # 421: the server is closing the connection; -1: smtplib saw no reply at all.
    return ConnectionLostError(message) if code in (421, -1) else SendError(message)


class SmtpConnection:
    """An open, authenticated connection; `connect` builds it."""

    def __init__(self, client: smtplib.SMTP, host: str) -> None:
        self._client = client
        self._host = host

    def envelope(self, sender: str, recipient: str) -> None:
        """MAIL FROM and RCPT TO for one message."""
        try:
            code, reply = self._client.mail(sender)
            if code != 250:
                self.reset()
                raise _refusal("MAIL FROM", code, reply)
            code, reply = self._client.rcpt(recipient)
            if code not in (250, 251):
                self.reset()
                raise _refusal("RCPT TO", code, reply)
        except (smtplib.SMTPException, OSError) as exc:
            raise ConnectionLostError(f"SMTP connection to {self._host} lost: {exc}") from None

    def data(self, raw: bytes) -> None:
        """Send the message itself; the server's 250 means it took responsibility for it."""
        try:
            # smtplib checks the 354 but returns the final reply unchecked (sendmail checks it).
            code, reply = self._client.data(raw)
        except smtplib.SMTPDataError as exc:
            self.reset()
            raise _refusal("DATA", exc.smtp_code, exc.smtp_error) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise AmbiguousDeliveryError(
                f"SMTP connection to {self._host} broke during DATA: {exc}"
            ) from None
        if code == -1:
            raise AmbiguousDeliveryError(f"SMTP {self._host} sent no reply after DATA")
        if code != 250:
            self.reset()
            raise _refusal("DATA", code, reply)

    def reset(self) -> None:
        """RSET; a failure here only means the connection is gone, which the next step reports."""
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


def open_client(settings: SmtpSettings, local_hostname: str | None = None) -> smtplib.SMTP:
    """A connected, greeted and (when a username is set) logged-in smtplib client: implicit TLS,
    STARTTLS (never falling back to clear text) or plain, certificates verified unless configured
    off. Raises SendError when the server cannot be reached, AuthenticationError on bad login."""
    helo = local_hostname or socket.gethostname()  # getfqdn() may wait on DNS
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
        _start(client, settings)
    except BaseException:
        client.close()
        raise
    return client


def connect(settings: SmtpSettings, local_hostname: str | None = None) -> SmtpConnection:
    """Open a connection as configured (see `open_client`) for the reply outbox."""
    client = open_client(settings, local_hostname)
    return SmtpConnection(client, f"{settings.host}:{settings.port}")


def _start(client: smtplib.SMTP, settings: SmtpSettings) -> None:
    where = f"{settings.host}:{settings.port}"
    try:
        client.ehlo()
        if settings.security == "starttls":
            if not client.has_extn("starttls"):
                # Never fall back to clear text when encryption was asked for.
                raise SendError(f"SMTP {where} does not offer STARTTLS")
            client.starttls(context=tls_context(settings))
            client.ehlo()
        if settings.username:
            client.login(settings.username, settings.secret())
    except smtplib.SMTPAuthenticationError as exc:
        raise AuthenticationError(
            f"SMTP {where} rejected the login of {settings.username}: {exc.smtp_code}"
        ) from None
    except smtplib.SMTPNotSupportedError:
        raise AuthenticationError(f"SMTP {where} does not offer AUTH") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise SendError(f"SMTP {where}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed ({exc.verify_message})"
    return str(exc) or type(exc).__name__
