"""The IMAP adapter: connect, wait for new mail (IDLE or poll), fetch by UID, mark, move, APPEND.

Everything the daemon does to a mailbox goes through `ImapMailbox`, so network and protocol errors
are translated in one place into `MailboxError` / `AuthenticationError` (both transient: the caller
backs off and reconnects).
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from triage.core.errors import AuthenticationError, MailboxError
from triage.core.hosts import tls_context
from triage.core.settings import ImapAccount
from triage.ingest.oauth.tokens import AccessToken, oauthbearer_response, xoauth2_response

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from triage.ingest.oauth.tokens import TokenProvider

log = logging.getLogger(__name__)

FETCH_BODY = b"BODY[]"


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """What SELECT tells about a folder."""

    name: str
    uidvalidity: int
    uidnext: int
    exists: int


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn the many ways an IMAP call can fail into triage's transient errors."""
    from imapclient.exceptions import IMAPClientError, LoginError

    try:
        yield
    except LoginError as exc:
        raise AuthenticationError(f"{what}: login rejected ({_short(exc)})") from None
    except (IMAPClientError, OSError, ssl.SSLError, EOFError) as exc:
        raise MailboxError(f"{what}: {type(exc).__name__}: {_short(exc)}") from None


def _sasl_login(client: IMAPClient, mechanism: str, initial: bytes) -> None:
    """AUTHENTICATE with `mechanism`, answering the first challenge with `initial` and any
    later one (the server's error report, RFC 7628 3.2.3) with an empty line: sending the
    token again, as imapclient's own `oauth2_login` does, is not what the server asks for.
    Raises imapclient's LoginError with the server's answer (never the token)."""
    from imapclient.exceptions import LoginError

    sent = False

    def answer(_challenge: bytes) -> bytes:
        nonlocal sent
        if sent:
            return b""
        sent = True
        return initial

    imap: Any = client._imap  # imapclient's own `_command_and_check` is private as well
    try:
        typ, data = imap.authenticate(mechanism, answer)
    except imap.abort:
        raise  # the connection broke: a MailboxError, not a refusal
    except imap.error as exc:
        raise LoginError(_short(exc)) from None
    if typ != "OK":
        raise LoginError(_short(Exception(data)))
    # imapclient learns the capabilities after a login; keep its state as its own login does.
    client._cached_capabilities = None


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\r", " ").replace("\n", " ").strip()
    return text[:200] or type(exc).__name__


# -- FETCH, the fast way ------------------------------------------------------------------------
#
# imapclient's FETCH reads the responses with imaplib (in C, literals in one read) and then
# tokenises every response again in Python, which costs more than the reading. The responses a
# backlog gets are all of one shape (`* 7 FETCH (UID 42 BODY[] {1234}` + literal + `)`): those
# are taken apart here with one regular expression each. Anything else (another item order,
# FLAGS, an unsolicited FETCH of another message) goes to imapclient's own parser, unchanged.

_BODY_RESPONSE = re.compile(rb"\d+ \(UID (\d+) BODY\[\] \{(\d+)\}")
_SIZE_RESPONSE = re.compile(rb"\d+ \(UID (\d+) RFC822\.SIZE (\d+)\)")


def _uid_fetch(client: IMAPClient, uids: Sequence[int], items: str) -> list[Any]:
    """imaplib's untagged FETCH data of `UID FETCH uids items`; raises IMAPClientError."""
    from imapclient.exceptions import IMAPClientError

    imap: Any = client._imap  # the imaplib connection imapclient itself uses
    typ, data = imap.uid("FETCH", ",".join(str(u) for u in uids), items)
    if typ != "OK":
        raise IMAPClientError(f"FETCH failed: {_short(Exception(data))}")
    return list(data)


def _fast_bodies(data: Sequence[Any], uids: Sequence[int]) -> dict[int, bytes] | None:
    """UID -> body for responses all of the usual shape, else None (use `_parsed`)."""
    wanted = set(uids)
    out: dict[int, bytes] = {}
    closing = False
    for item in data:
        if closing and item == b")":
            closing = False
            continue
        if closing or not isinstance(item, tuple) or len(item) != 2:
            return None
        head, body = item
        match = _BODY_RESPONSE.fullmatch(head)
        if match is None or int(match[2]) != len(body) or int(match[1]) not in wanted:
            return None
        out[int(match[1])] = bytes(body)
        closing = True
    return None if closing else out


def _fast_sizes(data: Sequence[Any], uids: Sequence[int]) -> dict[int, int] | None:
    """UID -> RFC822.SIZE for responses all of the usual shape, else None (use `_parsed`)."""
    wanted = set(uids)
    out: dict[int, int] = {}
    for item in data:
        match = _SIZE_RESPONSE.fullmatch(item) if isinstance(item, bytes) else None
        if match is None or int(match[1]) not in wanted:
            return None
        out[int(match[1])] = int(match[2])
    return out


def _parsed(data: list[Any], uids: Sequence[int]) -> dict[int, Any]:
    """What `IMAPClient.fetch` returns for `data`: imapclient's parser, unsolicited responses for
    other messages dropped."""
    from imapclient.response_parser import parse_fetch_response

    # Keyed by message number, then by the UID each response carries: keyed by UID, imapclient
    # files a response without one (`* 7 FETCH (FLAGS …)`, another client's flag change) under
    # its message number, which would pass for UID 7.
    wanted = set(uids)
    out: dict[int, Any] = {}
    for values in parse_fetch_response(data, True, False).values():
        uid = values.get(b"UID")
        if uid in wanted:
            out.setdefault(uid, {}).update(values)
    return out


class ImapMailbox:
    """One logged-in IMAP connection for one account."""

    def __init__(self, account: ImapAccount, tokens: TokenProvider | None = None) -> None:
        self.account = account
        # Set for an account that signs in with OAuth2 (XOAUTH2 or OAUTHBEARER) instead of a
        # password.
        self.tokens = tokens
        # The access token this connection logged in with: the session is renewed before it
        # expires (see `session_expires_in`), as Exchange Online drops it then.
        self._token: AccessToken | None = None
        # Seconds the token had left at login (how long a session lasts with this provider).
        self.session_lifetime: float | None = None
        self._client: IMAPClient | None = None
        self._delimiter = "/"
        self._capabilities: set[str] | None = None
        self.folder: FolderInfo | None = None
        # What a periodic scan (the corrections') saw of each folder on this connection, by
        # folder: see `folder_state`.
        self.scanned: dict[str, tuple[tuple[int, ...], float]] = {}

    # -- connection ----------------------------------------------------------------------------

    @property
    def client(self) -> IMAPClient:
        """The live client; raises MailboxError when not connected."""
        if self._client is None:
            raise MailboxError(f"{self.account.name}: not connected")
        return self._client

    @property
    def connected(self) -> bool:
        """True between a successful `connect()` and `close()`."""
        return self._client is not None

    def connect(self, *, fresh_token: bool = False) -> None:
        """Open the connection (implicit TLS, STARTTLS or plain) and log in; `fresh_token`: with
        a new access token, not the cached one (a session renewed because its token expires)."""
        from imapclient import IMAPClient

        acc = self.account
        where = f"{acc.name} ({acc.host}:{acc.port})"
        ctx = tls_context(acc.ca_file, acc.verify_certificates)
        # The token first: a credential waiting for a person (or an endpoint that is down)
        # fails here, without a connection to the server at every look.
        token = self.tokens.access_token(force=fresh_token) if self.tokens is not None else None
        with _translated(f"cannot connect to {where}"):
            client = IMAPClient(
                acc.host,
                port=acc.port,
                ssl=acc.security == "tls",
                ssl_context=ctx if acc.security == "tls" else None,
                timeout=acc.timeout,
            )
        # imapclient sets imaplib's debug level to 5 so that its logger may see the protocol;
        # at that level imaplib formats a repr() of every response, logged or not: a message
        # fetched costs two to three times its size again in memory, and the time to format it.
        client._imap.debug = 0
        try:
            with _translated(f"cannot log in to {where}"):
                if acc.security == "starttls":
                    client.starttls(ctx)
                if token is None:
                    client.login(acc.username, acc.secret())
                else:
                    self._token = self._oauth2_login(client, where, token)
                    self.session_lifetime = self._token.seconds_left()
                folders = client.list_folders(directory="", pattern="")
                if folders and folders[0][1]:
                    self._delimiter = _text(folders[0][1])
        except BaseException:
            _quiet_logout(client)
            raise
        self._client = client
        self._capabilities = None
        self.folder = None
        self.scanned = {}

    def _oauth2_login(self, client: IMAPClient, where: str, token: AccessToken) -> AccessToken:
        """Sign in with an access token; a rejected token is refreshed and tried once more (it
        may have been revoked, or the clocks disagree). Raises AuthenticationError, or the
        provider's TokenUnavailable / ReauthorisationNeeded."""
        from imapclient.exceptions import LoginError

        assert self.tokens is not None
        try:
            _sasl_login(client, self._mechanism(), self._sasl(token))
        except LoginError:
            log.info("%s: the access token was refused; asking for a new one", where)
            token = self.tokens.access_token(force=True)
            _sasl_login(client, self._mechanism(), self._sasl(token))
        return token

    def _mechanism(self) -> str:
        oauth2 = self.account.oauth2
        return (oauth2.mechanism if oauth2 is not None else "xoauth2").upper()

    def _sasl(self, token: AccessToken) -> bytes:
        acc = self.account
        if self._mechanism() == "OAUTHBEARER":
            return oauthbearer_response(acc.username, token.token, acc.host, acc.port)
        return xoauth2_response(acc.username, token.token)

    def session_expires_in(self) -> float | None:
        """Seconds until the access token of this session expires; None for a password login
        or when not connected."""
        if self._client is None or self._token is None:
            return None
        return self._token.seconds_left()

    def drop(self) -> None:
        """Close the connection without a word (no IDLE DONE, no LOGOUT), as a crash would; safe
        to call twice. For a service that stops: a thousand accounts leaving IDLE and logging
        out, each waiting for the server's answers and then for the interpreter lock, would
        take seconds; nothing is pending on a connection in IDLE."""
        self._token = None
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown()

    def close(self) -> None:
        """Log out and drop the connection; safe to call twice."""
        self._token = None
        client, self._client = self._client, None
        if client is not None:
            _quiet_logout(client)

    def capabilities(self) -> set[str]:
        """The server's capabilities, upper-case text (asked once per connection)."""
        if self._capabilities is None:
            with _translated(f"{self.account.name}: CAPABILITY"):
                self._capabilities = {_text(c).upper() for c in self.client.capabilities()}
        return self._capabilities

    @property
    def has_idle(self) -> bool:
        """True when the server offers IDLE (RFC 2177)."""
        return "IDLE" in self.capabilities()

    # -- folders -------------------------------------------------------------------------------

    def folder_path(self, *parts: str) -> str:
        """A folder name from parts joined with the server's hierarchy delimiter."""
        return self._delimiter.join(parts)

    def select(self, folder: str) -> FolderInfo:
        """SELECT a folder read-write and return its UIDVALIDITY and UIDNEXT."""
        with _translated(f"{self.account.name}: cannot select {folder!r}"):
            info = self.client.select_folder(folder)
        uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        uidnext = int(info.get(b"UIDNEXT", 0))
        if not uidnext:
            with _translated(f"{self.account.name}: STATUS {folder!r}"):
                uidnext = int(self.client.folder_status(folder, [b"UIDNEXT"])[b"UIDNEXT"])
        self.folder = FolderInfo(folder, uidvalidity, uidnext, int(info.get(b"EXISTS", 0)))
        return self.folder

    def folder_state(self, folder: str) -> tuple[int, ...] | None:
        """A fingerprint of `folder` that changes whenever a message arrives, leaves or has a
        flag or keyword changed: (UIDVALIDITY, UIDNEXT, MESSAGES, HIGHESTMODSEQ) by one STATUS
        (RFC 7162), without selecting it. None when the server cannot tell (no CONDSTORE), or
        the folder does not exist: then look."""
        if "CONDSTORE" not in self.capabilities():
            return None
        names = [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES", b"HIGHESTMODSEQ"]
        from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

        with _translated(f"{self.account.name}: STATUS {folder!r}"):
            if self.folder is not None and self.folder.name == folder:
                # STATUS of the selected folder answers as this session last saw it (RFC
                # 3501 6.3.10): a NOOP first lets the session learn of others' changes.
                self.client.noop()
            try:
                found = self.client.folder_status(folder, names)
            except IMAPClientAbortError:
                raise  # the connection broke: translated above
            except IMAPClientError:
                return None  # a NO: no such folder (the connection is fine)
        state = tuple(int(found.get(name, 0)) for name in names)
        # HIGHESTMODSEQ 0 (or none): no persistent mod-sequences (RFC 7162 3.1.2.1), so a
        # keyword a person sets would change nothing here.
        return state if state[-1] else None

    def folder_exists(self, folder: str) -> bool:
        """True when `folder` exists on the server."""
        with _translated(f"{self.account.name}: LIST {folder!r}"):
            return bool(self.client.folder_exists(folder))

    def ensure_folder(self, folder: str) -> None:
        """Create `folder` (and subscribe to it) unless it exists."""
        with _translated(f"{self.account.name}: cannot create {folder!r}"):
            if not self.client.folder_exists(folder):
                self.client.create_folder(folder)
                self.client.subscribe_folder(folder)

    def special_folder(self, flag: str) -> str | None:
        """The folder marked with a special-use flag such as `\\Sent` (RFC 6154), if any."""
        with _translated(f"{self.account.name}: LIST"):
            for flags, _delim, name in self.client.list_folders():
                if flag.encode() in flags or flag in flags:
                    return str(name)
        return None

    # -- reading -------------------------------------------------------------------------------

    def uids_from(self, first_uid: int) -> list[int]:
        """UIDs ≥ first_uid in the selected folder, ascending."""
        with _translated(f"{self.account.name}: UID SEARCH"):
            found = self.client.search(["UID", f"{max(first_uid, 1)}:*"])
        # `n:*` always matches the highest UID, even when it is below n (RFC 3501): filter.
        return sorted(u for u in found if u >= first_uid)

    def uids_since(self, day: date) -> list[int]:
        """UIDs of messages whose internal date is on or after `day`."""
        with _translated(f"{self.account.name}: UID SEARCH SINCE"):
            return sorted(self.client.search(["SINCE", day]))

    def all_uids(self) -> list[int]:
        """Every UID in the selected folder."""
        with _translated(f"{self.account.name}: UID SEARCH ALL"):
            return sorted(self.client.search(["ALL"]))

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID that still exists."""
        if not uids:
            return {}
        with _translated(f"{self.account.name}: FETCH RFC822.SIZE"):
            raw = _uid_fetch(self.client, uids, "(RFC822.SIZE)")
            fast = _fast_sizes(raw, uids)
            if fast is not None:
                return fast
            data = _parsed(raw, uids)
        return {uid: int(v.get(b"RFC822.SIZE", 0)) for uid, v in data.items()}

    def internal_dates(self, uids: Sequence[int]) -> dict[int, datetime]:
        """INTERNALDATE of each UID that still exists (when the server received the message, or
        the date an APPEND gave it), timezone-aware."""
        if not uids:
            return {}
        with _translated(f"{self.account.name}: FETCH INTERNALDATE"):
            data = self.client.fetch(list(uids), [b"INTERNALDATE"])
        out = {}
        for uid, v in data.items():
            value = v.get(b"INTERNALDATE")
            if isinstance(value, datetime):
                # imapclient hands out naive local time unless told otherwise.
                out[uid] = value if value.tzinfo else value.astimezone()
        return out

    def fetch(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The raw bytes of each UID that still exists, without setting \\Seen."""
        if not uids:
            return {}
        with _translated(f"{self.account.name}: FETCH"):
            raw = _uid_fetch(self.client, uids, "(BODY.PEEK[])")
            fast = _fast_bodies(raw, uids)
            if fast is not None:
                return fast
            data = _parsed(raw, uids)
        return {uid: bytes(v.get(FETCH_BODY, b"")) for uid, v in data.items()}

    def fetch_message_ids(self, uids: Sequence[int]) -> dict[int, str]:
        """The Message-ID header of each UID (empty string when absent)."""
        if not uids:
            return {}
        field = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
        with _translated(f"{self.account.name}: FETCH Message-ID"):
            data = self.client.fetch(list(uids), [b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        out = {}
        for uid, v in data.items():
            raw = bytes(v.get(field, b"")).decode("ascii", "replace")
            out[uid] = raw.partition(":")[2].strip()
        return out

    def search_keyword(self, keyword: str, present: bool = True) -> list[int]:
        """UIDs that have (or lack) a keyword."""
        criteria: list[Any] = ["KEYWORD", keyword] if present else ["UNKEYWORD", keyword]
        with _translated(f"{self.account.name}: UID SEARCH KEYWORD"):
            return sorted(self.client.search(criteria))

    def search_message_id(self, message_id: str) -> list[int]:
        """The UID of the one message whose Message-ID is exactly `message_id`; empty when
        there is none, more than one, or the id is not safe to search for.

        SEARCH HEADER matches substrings, and the id comes from the mail itself: only an id of
        printable ASCII without IMAP's atom-specials is sent (quoted), so a hostile id can
        neither break the command nor fail to encode; each hit's Message-ID is then fetched and
        compared, so that a longer id or a forged second copy is never taken for the original.
        """
        if not searchable_message_id(message_id):
            return []
        command = b'HEADER Message-ID "' + message_id.encode("ascii") + b'"'
        with _translated(f"{self.account.name}: UID SEARCH HEADER"):
            hits = sorted(self.client.search(command))
        if not hits:
            return []
        ids = self.fetch_message_ids(hits)
        exact = [u for u in hits if _angle_id(ids.get(u, "")) == message_id]
        return exact if len(exact) == 1 else []

    # -- writing -------------------------------------------------------------------------------

    def add_flags(self, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Add flags or keywords (e.g. `\\Answered`, `$Triage-Sales`) to messages."""
        if uids and flags:
            with _translated(f"{self.account.name}: STORE +FLAGS"):
                self.client.add_flags(list(uids), list(flags), silent=True)

    def remove_flags(self, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Remove flags or keywords from messages."""
        if uids and flags:
            with _translated(f"{self.account.name}: STORE -FLAGS"):
                self.client.remove_flags(list(uids), list(flags), silent=True)

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move messages to `folder` (MOVE when offered, else COPY + delete + UID EXPUNGE)."""
        if not uids:
            return
        with _translated(f"{self.account.name}: MOVE to {folder!r}"):
            if "MOVE" in self.capabilities():
                self.client.move(list(uids), folder)
            else:
                self.client.copy(list(uids), folder)
                self.client.delete_messages(list(uids))
                self.client.uid_expunge(list(uids))

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> None:
        """APPEND a message to `folder` with flags."""
        with _translated(f"{self.account.name}: APPEND to {folder!r}"):
            self.client.append(folder, raw, flags=tuple(flags))

    # -- waiting -------------------------------------------------------------------------------

    def noop(self) -> None:
        """Ask the server for news (and prove the connection is alive)."""
        with _translated(f"{self.account.name}: NOOP"):
            self.client.noop()

    def idle_start(self) -> None:
        """Enter IDLE (RFC 2177) on the selected folder."""
        with _translated(f"{self.account.name}: IDLE"):
            self.client.idle()

    def idle_poll(self, timeout: float, interrupt: int | None = None) -> bool:
        """Wait up to `timeout` seconds in IDLE; True when the server announced a change.

        `interrupt`: a file descriptor that ends the wait early when it becomes readable (the
        daemon's stop and wake-up pipe), so that a long wait costs no CPU; False then. With it,
        True also when the server closed the connection (leaving IDLE reports the error, where
        waiting on would find the closed socket readable again and again).
        """
        with _translated(f"{self.account.name}: IDLE"):
            if interrupt is None:
                return bool(self.client.idle_check(timeout=timeout))
            sock = self.client.socket()
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            poller.register(interrupt, select.POLLIN)
            ready = {fd for fd, _events in poller.poll(max(timeout, 0.0) * 1000)}
            if sock.fileno() not in ready:
                return False
            # The server wrote (or closed the connection): imapclient reads what there is.
            self.client.idle_check(timeout=0)
            return True

    def idle_stop(self) -> None:
        """Leave IDLE (DONE) so other commands can be sent."""
        with _translated(f"{self.account.name}: IDLE DONE"):
            self.client.idle_done()


# IMAP atom-specials (RFC 3501) and the quoted-string specials: an id holding any of them (or
# anything outside printable ASCII) is never sent in a SEARCH.
_UNSAFE_IN_SEARCH = frozenset('(){%*"\\]')


def searchable_message_id(message_id: str) -> bool:
    """True when `message_id` is `<…>` of printable ASCII without IMAP specials."""
    return (
        len(message_id) > 2
        and message_id.startswith("<")
        and message_id.endswith(">")
        and all("!" <= ch <= "~" and ch not in _UNSAFE_IN_SEARCH for ch in message_id)
    )


def _angle_id(header_value: str) -> str:
    """The `<…>` part of a Message-ID header value (unfolded), or the value stripped."""
    value = " ".join(header_value.split())
    start, end = value.find("<"), value.find(">")
    return value[start : end + 1] if 0 <= start < end else value


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _quiet_logout(client: IMAPClient) -> None:
    # Logging out of a broken connection fails in many ways; none of them matter here.
    try:
        client.logout()
    except (TimeoutError, OSError, ssl.SSLError, EOFError):
        pass
    except Exception as exc:  # noqa: BLE001 - imapclient raises bare imaplib errors on a dead socket
        log.debug("logout failed: %s", exc)
    with contextlib.suppress(OSError):
        client.shutdown()
