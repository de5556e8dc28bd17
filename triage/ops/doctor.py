"""`triage doctor`: check everything the daemon needs before it is started, and say how to fix it.

Each check is a function from settings to `Finding`s (check name, status, detail, fix). They talk to
the real servers and files the daemon will use, the way the daemon uses them, but change nothing
visible: no mail is sent (SMTP ends after the login with QUIT), no folder is created, and the only
write is a rolled-back transaction in the database (which is created and migrated if missing, as the
daemon would).

Statuses: `ok`; `warning` (works, but degraded, e.g. no IDLE means polling); `problem` (the daemon
will fail or misbehave). Details and fixes never contain a password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from triage.core.errors import (
    AuthenticationError,
    ConfigError,
    MailboxError,
    ModelError,
    ReauthorisationNeeded,
    SendError,
    StoreError,
    TemplateError,
    TokenUnavailable,
    TriageError,
)
from triage.core.settings import ImapAccount, Settings

if TYPE_CHECKING:
    from triage.ingest.mailbox import ImapMailbox
    from triage.ingest.oauth.tokens import TokenProvider
    from triage.ops.limits import Limits

Status = Literal["ok", "warning", "problem"]

# A doctor must answer promptly even when a server does not: cap the configured timeouts.
MAX_TIMEOUT = 10.0
# How many template problems are listed in the table; `triage templates check` shows all.
MAX_LISTED = 5


@dataclass(frozen=True, slots=True)
class Finding:
    """The result of one check: what was checked, how it went, and what to do about it."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        """True unless the status is `problem` (a warning does not fail the doctor)."""
        return self.status != "problem"


def _ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def _warning(check: str, detail: str, fix: str = "") -> Finding:
    return Finding(check, "warning", detail, fix)


def _problem(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "problem", detail, fix)


# -- settings -------------------------------------------------------------------------------------


def settings_findings(error: ConfigError | None, source: Path | None) -> list[Finding]:
    """The settings row: ok, or one problem per line of the validation error."""
    where = str(source) if source else "environment and defaults (no config file)"
    if error is None:
        return [_ok("settings", f"valid ({where})")]
    return [
        _problem("settings", line, "correct the setting named, then run `triage doctor` again")
        for line in str(error).splitlines()
    ]


# -- store ----------------------------------------------------------------------------------------


def check_store(settings: Settings) -> list[Finding]:
    """Check the SQLite library's version, open (create, migrate) the database and prove it is
    writable with a rolled-back write."""
    from triage.store.db import SQLITE_VERSION, Database, sqlite_library_problem
    from triage.store.probe import probe_write

    if settings.store.is_postgresql:
        return _check_postgresql(settings)
    path = settings.store.path
    if problem := sqlite_library_problem():
        return [
            _problem(
                "store",
                problem,
                "run triage with a Python whose sqlite3 module links a newer SQLite library",
            )
        ]
    fix = (
        f"make {path.parent} writable by the user triage runs as, or set store.path "
        "(the systemd unit allows writes only below /var/lib/triage)"
    )
    try:
        db = Database(path)
    except StoreError as exc:
        return [_problem("store", str(exc), fix)]
    try:
        version = probe_write(db)
    except StoreError as exc:
        return [_problem("store", str(exc), fix)]
    finally:
        db.close()
    return [_ok("store", f"{path} (schema {version}, writable, SQLite {SQLITE_VERSION})")]


def _check_postgresql(settings: Settings) -> list[Finding]:
    """Connect (with the password file), migrate, prove writable; name the server's version
    and the schema level against this triage's."""
    from triage.store.db import Database
    from triage.store.probe import probe_write
    from triage.store.schema import MIGRATIONS

    store = settings.store
    fix = (
        "check store.url (host, port, database, user), store.password_file, that the server"
        " runs and pg_hba.conf lets this host in"
    )
    try:
        db = Database(store)
        version = probe_write(db)
        server = db.reads.execute("SHOW server_version").fetchone()[0]
    except StoreError as exc:
        return [_problem("store", str(exc), fix)]
    major = int(str(server).split(".")[0])
    if major < 13:
        return [_problem("store", f"PostgreSQL {server} is too old", "PostgreSQL 13 or newer")]
    return [
        _ok(
            "store",
            f"{store.url} (PostgreSQL {server}, schema {version} of {len(MIGRATIONS)}, writable)",
        )
    ]


# -- IMAP -----------------------------------------------------------------------------------------


def _account_key(index: int) -> str:
    """How the operator writes account `index`'s settings: `imap` or `imap.accounts[N]`."""
    return "imap" if index == 0 else f"imap.accounts[{index - 1}]"


def _password_source(account: ImapAccount, key: str) -> str:
    if account.password_file is not None:
        return f"{key}.password_file ({account.password_file})"
    if key == "imap":
        return "TRIAGE_IMAP__PASSWORD"
    return f"{key}.password_file"


def check_imap(settings: Settings, account: ImapAccount, index: int) -> list[Finding]:
    """Connect and log in; check IDLE, MOVE, the watched folders, and the Sent/Drafts folders."""
    from triage.ingest.mailbox import ImapMailbox

    key = _account_key(index)
    name = f"imap {account.name}"
    where = f"{account.username} at {account.host}:{account.port} ({account.security})"
    account = account.model_copy(update={"timeout": min(account.timeout, MAX_TIMEOUT)})
    tokens = _tokens(settings, account.name) if account.auth == "oauth2" else None
    mailbox = ImapMailbox(account, tokens)
    try:
        mailbox.connect()
    except (ReauthorisationNeeded, TokenUnavailable) as exc:
        return [_token_problem(f"{name}: login", account.name, key, exc)]
    except AuthenticationError:
        if tokens is not None:
            return [
                _problem(
                    f"{name}: login",
                    f"the server refused the access token of {account.username} at "
                    f"{account.host}:{account.port}",
                    f"check that the app may open this mailbox ({key}.oauth2.scope; Microsoft:"
                    " IMAP.AccessAsApp or IMAP.AccessAsUser.All and the mailbox permission;"
                    " Google: https://mail.google.com/) and that the username is the mailbox",
                )
            ]
        return [
            _problem(
                f"{name}: login",
                f"login rejected for {where}",
                f"wrong password for {account.username}: check {_password_source(account, key)}"
                f" (and {key}.username)",
            )
        ]
    except MailboxError as exc:
        return [
            _problem(
                f"{name}: connect",
                str(exc),
                f"check {key}.host, {key}.port and {key}.security (tls: usually port 993; "
                f"starttls or plain: 143); for a private CA set {key}.ca_file",
            )
        ]
    findings = [_ok(f"{name}: login", f"logged in as {where}")]
    try:
        findings.append(_capabilities(name, account, mailbox))
        findings.extend(_folders(name, key, account, mailbox))
        findings.extend(_special_folders(name, settings, mailbox))
        return findings
    except MailboxError as exc:
        return [
            *findings,
            _problem(f"{name}: session", str(exc), "check the IMAP server's log for this user"),
        ]
    finally:
        mailbox.close()


def _tokens(settings: Settings, name: str) -> TokenProvider:
    from triage.ingest.oauth.grants import CheckingGrantStore
    from triage.ingest.oauth.providers import build_providers

    grants = CheckingGrantStore(settings.store, settings.oauth2_key_file())
    provider = build_providers(settings, grants).get(name)
    if provider is None:
        raise ConfigError(f"{name}: no OAuth2 provider configured")
    return provider


def _token_problem(
    check: str, credential: str, key: str, exc: ReauthorisationNeeded | TokenUnavailable
) -> Finding:
    """A finding for a credential whose provider gave no token, with what to do."""
    if isinstance(exc, TokenUnavailable):
        return _problem(
            check,
            str(exc),
            f"the token endpoint cannot be reached: check {key}.oauth2.token_url (or the"
            " provider's status) and the network; the daemon retries by itself",
        )
    if exc.code == "config_error":
        return _problem(check, str(exc), "fix the file named, then run `triage doctor` again")
    return _problem(check, str(exc), f"run `triage auth login {credential}` as the service user")


def check_oauth2(settings: Settings) -> list[Finding]:
    """Each OAuth2 credential: a grant stored (where one is needed), not waiting for a person,
    and its client secret not about to expire."""
    from datetime import UTC, datetime

    from triage.ingest.oauth.providers import credentials, grant_store
    from triage.ops.alerts import grant_ends

    found = credentials(settings)
    if not found:
        return []
    rows = {row.name: row for row in grant_store(settings).rows()}
    today = datetime.now(UTC).date()
    findings = []
    for name, credential in found.items():
        check = f"oauth2 {name}"
        oauth2 = credential.settings
        row = rows.get(name)
        needs_grant = oauth2.provider in ("generic", "google", "microsoft-delegated")
        if row is not None and row.state == "needs-reauth":
            findings.append(
                _problem(
                    check,
                    f"{oauth2.provider}: needs re-authorisation since {row.error_at}"
                    f" ({row.error_code})",
                    f"run `triage auth login {name}` as the service user",
                )
            )
        elif needs_grant and (row is None or row.blob is None):
            findings.append(
                _problem(
                    check,
                    f"{oauth2.provider}: no sign-in stored yet",
                    f"run `triage auth login {name}` (or `triage auth import {name}"
                    " --refresh-token-file FILE`) as the service user",
                )
            )
        else:
            obtained = f"; signed in {row.obtained_at}" if row and row.obtained_at else ""
            findings.append(_ok(check, f"{oauth2.provider}{obtained}"))
        ends = grant_ends(row.obtained_at if row else None, oauth2.grant_lifetime_days)
        near = ends is not None and (ends - datetime.now(UTC)).total_seconds() <= 2 * 86400
        if near and row is not None and row.state != "needs-reauth":
            findings.append(
                _warning(
                    f"{check}: sign-in",
                    f"ends on {ends:%Y-%m-%d %H:%M} UTC (grant_lifetime_days ="
                    f" {oauth2.grant_lifetime_days})",
                    f"run `triage auth login {name}` before then",
                )
            )
        expires = oauth2.client_secret_expires
        if expires is not None:
            left = (expires - today).days
            if left < 0:
                findings.append(
                    _problem(
                        f"{check}: client secret",
                        f"expired on {expires}",
                        "create a new client secret, write it to client_secret_file and set"
                        " client_secret_expires",
                    )
                )
            elif left <= 14:
                findings.append(
                    _warning(
                        f"{check}: client secret",
                        f"expires in {left} day(s), on {expires}",
                        "create a new client secret before then",
                    )
                )
    return findings


def _capabilities(name: str, account: ImapAccount, mailbox: ImapMailbox) -> Finding:
    caps = mailbox.capabilities()
    missing = [c for c in ("IDLE", "MOVE") if c not in caps]
    present = ", ".join(c for c in ("IDLE", "MOVE") if c in caps) or "neither IDLE nor MOVE"
    if not missing:
        return _ok(f"{name}: capabilities", present)
    consequences = []
    if "IDLE" in missing:
        consequences.append(
            f"no IDLE: new mail is seen by polling every {account.poll_interval:g} s"
        )
    if "MOVE" in missing:
        consequences.append("no MOVE: moves use COPY + delete + EXPUNGE")
    return _warning(
        f"{name}: capabilities",
        f"{present}; {'; '.join(consequences)}",
        "works as is; a server with IDLE (RFC 2177) and MOVE (RFC 6851) answers faster",
    )


def _folders(name: str, key: str, account: ImapAccount, mailbox: ImapMailbox) -> list[Finding]:
    findings = []
    for folder in account.folders:
        try:
            info = mailbox.select(folder)
        except MailboxError as exc:
            findings.append(
                _problem(
                    f"{name}: folder {folder}",
                    str(exc),
                    f"create the folder on the server or correct {key}.folders",
                )
            )
        else:
            findings.append(_ok(f"{name}: folder {folder}", f"{info.exists} messages"))
    return findings


def _special_folders(name: str, settings: Settings, mailbox: ImapMailbox) -> list[Finding]:
    """Sent (live mode files replies there) and Drafts (draft mode saves replies there)."""
    replies = settings.replies
    findings = []
    for flag, configured, setting, needed_by in (
        ("\\Sent", replies.sent_folder, "replies.sent_folder", "live"),
        ("\\Drafts", replies.drafts_folder, "replies.drafts_folder", "draft"),
    ):
        check = f"{name}: {flag[1:]} folder"
        if configured:
            try:
                mailbox.select(configured)
            except MailboxError as exc:
                findings.append(
                    _problem(check, str(exc), f"create {configured!r} or correct {setting}")
                )
            else:
                findings.append(_ok(check, f"{configured} (from {setting})"))
            continue
        found = mailbox.special_folder(flag)
        if found:
            findings.append(_ok(check, f"{found} (special-use {flag})"))
            continue
        detail = f"no folder is marked {flag} (RFC 6154) and {setting} is not set"
        fix = f"set {setting} to the folder's name"
        if replies.mode == needed_by:
            findings.append(_problem(check, detail, fix))
        else:
            findings.append(_warning(check, f"{detail}; needed in {needed_by} mode", fix))
    return findings


# -- SMTP -----------------------------------------------------------------------------------------


def _smtp_needed(settings: Settings) -> bool:
    """Whether anything configured sends mail: live replies, the digest or hot-lead alerts."""
    return (
        settings.replies.mode == "live"
        or bool(settings.digest.recipients)
        or settings.leads.alert_hot
    )


def check_smtp(settings: Settings) -> list[Finding]:
    """Connect, STARTTLS/TLS as configured, log in when a username is set, QUIT; no mail sent."""
    from triage.act.smtp import connect

    smtp = settings.smtp.model_copy(update={"timeout": min(settings.smtp.timeout, MAX_TIMEOUT)})
    where = f"{smtp.host}:{smtp.port} ({smtp.security})"
    needed = _smtp_needed(settings)
    tokens = _tokens(settings, "smtp") if smtp.auth == "oauth2" else None
    if tokens is not None:
        smtp = smtp.model_copy(
            update={"username": settings.smtp_username(), "oauth2": settings.smtp_oauth2()}
        )
    try:
        connection = connect(smtp, tokens=tokens)
    except (ReauthorisationNeeded, TokenUnavailable) as exc:
        credential = settings.smtp.oauth2_account or "smtp"
        finding = _token_problem("smtp", credential, "smtp", exc)
    except AuthenticationError as exc:
        if tokens is not None:
            finding = _problem(
                "smtp",
                str(exc),
                "check that the app may send as this mailbox (Microsoft: SMTP.SendAsApp or"
                " SMTP.Send, SMTP AUTH enabled for the mailbox; Google: https://mail.google.com/)",
            )
        else:
            source = (
                f"smtp.password_file ({smtp.password_file})"
                if smtp.password_file
                else "TRIAGE_SMTP__PASSWORD"
            )
            finding = _problem(
                "smtp",
                str(exc),
                f"wrong password for {smtp.username}: check {source} (and smtp.username)",
            )
    except SendError as exc:
        finding = _problem(
            "smtp",
            str(exc),
            "check smtp.host, smtp.port and smtp.security (tls: usually 465; starttls: 587); "
            "for a private CA set smtp.ca_file",
        )
    else:
        connection.close()
        login = f"logged in as {smtp.username}" if smtp.username else "no login configured"
        return [_ok("smtp", f"{where}: {login}; no mail sent")]
    if not needed:
        # Nothing sends mail in this configuration yet; the operator should still know.
        return [
            _warning(
                finding.check,
                f"{finding.detail} (not used now: replies.mode = {settings.replies.mode}, "
                "no digest, no alerts)",
                finding.fix,
            )
        ]
    return [finding]


# -- certificates ---------------------------------------------------------------------------------


def check_certificates(settings: Settings) -> list[Finding]:
    """A warning for each TLS connection whose certificate is not verified: anyone on the path
    can pose as the server and read the password and the mail. Nothing when all are verified."""
    findings = []
    for index, account in enumerate(settings.imap.all_accounts()):
        if not account.verify_certificates and account.security != "plain":
            key = _account_key(index)
            findings.append(
                _warning(
                    f"imap {account.name}: certificates",
                    f"{key}.verify_certificates = false: the certificate of {account.host} is "
                    "not checked",
                    f"set {key}.ca_file to the CA that signed the server's certificate and "
                    f"remove {key}.verify_certificates",
                )
            )
    smtp = settings.smtp
    if not smtp.verify_certificates and smtp.security != "plain":
        findings.append(
            _warning(
                "smtp: certificates",
                f"smtp.verify_certificates = false: the certificate of {smtp.host} is not checked",
                "set smtp.ca_file to the CA that signed the server's certificate and remove "
                "smtp.verify_certificates",
            )
        )
    return findings


# -- sender authentication ------------------------------------------------------------------------


def check_sender_authentication(settings: Settings) -> list[Finding]:
    """A warning when no receiving server's verdict is trusted: then nobody is authenticated, so
    every reply carries fixed text (or none goes out, with `unauthenticated = "none"`)."""
    if any(t.strip() for t in settings.replies.trusted_authserv_ids):
        return []
    consequence = (
        "no reply is sent"
        if settings.replies.unauthenticated == "none"
        else "every reply carries fixed text only, addressed to From"
    )
    return [
        _warning(
            "sender authentication",
            f"replies.trusted_authserv_ids is empty: no sender can be authenticated, so "
            f"{consequence}",
            "set replies.trusted_authserv_ids to your receiving server's authserv-id "
            "(docs/security.md)",
        )
    ]


# -- templates ------------------------------------------------------------------------------------


def _reply_outcomes() -> list[str]:
    """The outcomes the disposer answers with a template (`sales`, `marketing`)."""
    # The mapping lives in the label table; read it rather than repeat it here.
    from triage.core.labels import reply_templates

    return reply_templates()


def check_templates(settings: Settings) -> list[Finding]:
    """Every template compiles and renders with sample data; every reply outcome has one."""
    from triage.act.replies import ReplyVariables, TemplateRenderer

    replies = settings.replies
    directory = replies.templates_dir
    if not directory.is_dir():
        return [
            _problem(
                "templates",
                f"templates directory {directory} does not exist"
                + (f" (relative to {Path.cwd()})" if not directory.is_absolute() else ""),
                "set replies.templates_dir to the folder holding the reply templates "
                "(an absolute path: a service starts in /)",
            )
        ]
    try:
        renderer = TemplateRenderer.from_settings(replies)
        problems = [str(p) for p in renderer.check(ReplyVariables.sample(replies))]
        outcomes = renderer.outcomes()
    except TemplateError as exc:
        return [_problem("templates", str(exc), "check replies.templates_dir and its permissions")]
    problems += [
        f"no template for outcome {name!r} ({name}.txt)"
        for name in _reply_outcomes()
        if name not in outcomes
    ]
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        return [
            _problem(
                "templates",
                f"{len(problems)} problem(s) in {directory}: {listed}{more}",
                f"run `triage templates check -d {directory}` and fix each file it names",
            )
        ]
    variants = ", ".join(
        f"{name} ({'/'.join(lang or 'default' for lang in langs)})"
        for name, langs in outcomes.items()
    )
    return [_ok("templates", f"{directory}: {variants}")]


# -- model ----------------------------------------------------------------------------------------


def check_model(settings: Settings) -> list[Finding]:
    """The model file loads the way the daemon loads it: card present, hash, trusted types only."""
    from triage.decide.classify import load_classifier, resolve_model_path

    path = settings.classifier.model_path
    try:
        classifier = load_classifier(path, settings.classifier.thresholds)
    except ModelError as exc:
        fix = "train a model with `triage train`, or set classifier.model_path"
        resolved = resolve_model_path(path)
        if resolved != path and resolved.exists():
            # `triage classify` would find it in the checkout, but the daemon does not look there.
            fix = f"set classifier.model_path to the absolute path {resolved}"
        return [_problem("model", str(exc), fix)]
    card = classifier.card
    return [
        _ok(
            "model",
            f"{path}: version {classifier.version}, classes {', '.join(classifier.classes)}, "
            f"scikit-learn {card.sklearn_version}, card ok",
        )
    ]


# -- process limits -------------------------------------------------------------------------------


def check_limits(settings: Settings, limits: Limits | None = None) -> list[Finding]:
    """Open files (LimitNOFILE / RLIMIT_NOFILE) and threads (TasksMax) against the accounts
    configured: the systemd unit's limits when systemd knows `triage.service`, else those a
    `triage run` started from this shell would have. One line per limit that is too low."""
    from triage.ops.limits import (
        limit_problems,
        needed_fds,
        needed_tasks,
        process_limits,
        service_limits,
    )

    if limits is None:
        limits = service_limits() or process_limits()
    accounts = len(settings.imap.all_accounts())
    workers = settings.ingest.workers
    pool = settings.store.pool_size
    fleet = settings.store.is_postgresql
    problems = limit_problems(accounts, workers, limits.fds, limits.tasks, pool, fleet=fleet)
    if problems:
        return [
            _problem("limits", f"{p.partition(':')[0]} ({limits.source})", p.partition(": ")[2])
            for p in problems
        ]
    tasks = "no thread limit" if limits.tasks is None else f"TasksMax {limits.tasks}"
    return [
        _ok(
            "limits",
            f"{accounts} account(s) need about {needed_fds(accounts, pool, fleet=fleet)} open"
            " files and"
            f" {needed_tasks(accounts, workers)} threads; {limits.source}: open files"
            f" {limits.fds}, {tasks}",
        )
    ]


# -- all together ---------------------------------------------------------------------------------

Check = Callable[[], list[Finding]]


def checks(settings: Settings) -> Iterator[tuple[str, Check]]:
    """The checks to run for `settings` with their names, in the order they are shown."""
    yield "store", partial(check_store, settings)
    yield "limits", partial(check_limits, settings)
    for index, account in enumerate(settings.imap.all_accounts()):
        yield f"imap {account.name}", partial(check_imap, settings, account, index)
    yield "smtp", partial(check_smtp, settings)
    yield "oauth2", partial(check_oauth2, settings)
    yield "certificates", partial(check_certificates, settings)
    yield "sender authentication", partial(check_sender_authentication, settings)
    yield "templates", partial(check_templates, settings)
    yield "model", partial(check_model, settings)


def run_checks(settings: Settings) -> list[Finding]:
    """Run every check; one that fails unexpectedly is reported as a problem, the others still
    run (a triage error here is a gap in a check, not a reason to hide the rest)."""
    findings: list[Finding] = []
    for name, check in checks(settings):
        try:
            findings.extend(check())
        except TriageError as exc:
            findings.append(_problem(name, str(exc), "see the detail"))
    return findings
