"""Token providers against a real (tiny) token endpoint on 127.0.0.1: caching, rotation saved
at once, the two failure kinds, recovery after a new login, sharing between threads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.oauth_fake import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT,
    FakeTokenServer,
    make_test_ca,
    running,
)
from triage.core.errors import ConfigError, ReauthorisationNeeded, TokenUnavailable
from triage.core.settings import OAuth2Settings
from triage.ingest.oauth.grants import GrantStore, create_key_file
from triage.ingest.oauth.providers import BaseProvider, make_provider, msal_error
from triage.ingest.oauth.tokens import AccessToken


@pytest.fixture
def fake() -> Iterator[FakeTokenServer]:
    with running(FakeTokenServer()) as server:
        yield server


@pytest.fixture
def grants(tmp_path: Path) -> GrantStore:
    return GrantStore(tmp_path / "triage.db", tmp_path / "oauth2.key")


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client.secret"
    path.write_text(CLIENT_SECRET + "\n")
    path.chmod(0o600)
    return path


def generic(fake: FakeTokenServer, secret_file: Path, **extra: object) -> OAuth2Settings:
    return OAuth2Settings.model_validate(
        {
            "provider": "generic",
            "token_url": f"{fake.url}/token",
            "client_id": CLIENT_ID,
            "client_secret_file": secret_file,
            "scope": ["mail"],
        }
        | extra
    )


def test_rotated_refresh_token_is_stored_before_the_access_token_is_returned(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    """The endpoint rotates the refresh token on every use and revokes the old one: at every
    request the store holds the latest one issued, and after every call too."""
    grants.store("main", "generic", fake.new_refresh_token())
    seen_at_request: list[tuple[str, str]] = []

    def probe(form: dict[str, str]) -> None:
        stored = grants.read("main")
        assert stored is not None
        seen_at_request.append((stored.secret, fake.issued_refresh[-1]))

    fake.on_request = probe
    provider = make_provider("main", generic(fake, secret_file), grants, "hello")
    tokens = []
    for _ in range(5):
        tokens.append(provider.access_token(force=True).token)
        stored = grants.read("main")
        assert stored is not None
        assert stored.secret == fake.issued_refresh[-1]
    assert all(stored == latest for stored, latest in seen_at_request)
    assert tokens == fake.issued_access
    row = grants.row("main")
    assert row is not None and row.rotations == 5 and row.rotated_at is not None
    # The form carries client_secret_post and the scope.
    assert fake.token_requests[-1]["client_secret"] == CLIENT_SECRET
    assert fake.token_requests[-1]["scope"] == "mail"


def test_access_token_is_cached_until_the_refresh_margin(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    """One round trip while the token has more than refresh_margin left; a new one after."""
    fake.access_ttl = 600
    grants.store("main", "generic", fake.new_refresh_token())
    now = [datetime.now(UTC)]
    provider = make_provider(
        "main", generic(fake, secret_file, refresh_margin=300), grants, clock=lambda: now[0]
    )
    first = provider.access_token()
    assert provider.access_token() is first
    now[0] += timedelta(seconds=299)
    assert provider.access_token() is first
    now[0] += timedelta(seconds=2)  # 299 s left: inside the margin
    second = provider.access_token()
    assert second.token != first.token
    assert len(fake.token_requests) == 2


def test_one_credential_shared_by_threads_refreshes_once_at_a_time(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    """Threads asking at once all get a valid token and never present a revoked refresh
    token (which the endpoint would answer with invalid_grant)."""
    grants.store("main", "generic", fake.new_refresh_token())
    provider = make_provider("main", generic(fake, secret_file), grants)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                provider.access_token(force=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = grants.read("main")
    assert stored is not None and stored.secret == fake.issued_refresh[-1]


@pytest.mark.parametrize(
    "code", ["invalid_grant", "invalid_client", "unauthorized_client", "access_denied"]
)
def test_permanent_errors_need_reauthorisation_and_are_recorded(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path, code: str
) -> None:
    """RFC 6749 errors that no retry cures raise ReauthorisationNeeded with the code, and the
    store says needs-reauth; further calls do not contact the endpoint."""
    grants.store("main", "generic", fake.new_refresh_token())
    fake.fail_with = code
    provider = make_provider("main", generic(fake, secret_file), grants)
    with pytest.raises(ReauthorisationNeeded) as caught:
        provider.access_token()
    assert caught.value.account == "main" and caught.value.code == code
    row = grants.row("main")
    assert row is not None and row.state == "needs-reauth" and row.error_code == code
    requests_before = len(fake.token_requests)
    for _ in range(3):
        with pytest.raises(ReauthorisationNeeded):
            provider.access_token(force=True)
    assert len(fake.token_requests) == requests_before


def test_a_new_login_recovers_without_a_restart(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    """After invalid_grant, storing a new grant (what `triage auth login` does in another
    process) makes the same provider try again, succeed and clear the state."""
    grants.store("main", "generic", "revoked-token")
    provider = make_provider("main", generic(fake, secret_file), grants)
    with pytest.raises(ReauthorisationNeeded):
        provider.access_token()
    grants.store("main", "generic", fake.new_refresh_token())
    row = grants.row("main")
    assert row is not None and row.state == "ok"
    assert provider.access_token().token == fake.issued_access[-1]
    row = grants.row("main")
    assert row is not None and row.state == "ok" and row.error_code == ""


def test_needs_reauth_cleared_when_a_token_comes_again_after_a_restart(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    """A new process whose first token works clears a needs-reauth left by an earlier one (an
    operator fixed the client secret file and restarted)."""
    grants.store("main", "generic", fake.new_refresh_token())
    grants.mark_needs_reauth("main", "generic", "invalid_client")
    provider = make_provider("main", generic(fake, secret_file), grants)
    provider.access_token()
    row = grants.row("main")
    assert row is not None and row.state == "ok"


def test_no_stored_grant_needs_a_login(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    provider = make_provider("main", generic(fake, secret_file), grants)
    with pytest.raises(ReauthorisationNeeded) as caught:
        provider.access_token()
    assert caught.value.code == "no_grant"
    assert "triage auth login main" in str(caught.value)
    assert fake.token_requests == []


@pytest.mark.parametrize("switch", ["status", "garbage"])
def test_endpoint_trouble_is_transient(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path, switch: str
) -> None:
    """A 503 or a non-JSON answer is TokenUnavailable (retried with backoff) and changes no
    state; the next call tries again."""
    grants.store("main", "generic", fake.new_refresh_token())
    if switch == "status":
        fake.status = 503
    else:
        fake.garbage = True
    provider = make_provider("main", generic(fake, secret_file), grants)
    with pytest.raises(TokenUnavailable):
        provider.access_token()
    row = grants.row("main")
    assert row is not None and row.state == "ok"
    fake.status, fake.garbage = 0, False
    assert provider.access_token().token == fake.issued_access[-1]


def test_unreachable_and_slow_endpoints_are_transient(
    grants: GrantStore, secret_file: Path, tmp_path: Path
) -> None:
    import socket

    grants.store("main", "generic", "rt")
    # A port nobody listens on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = OAuth2Settings(
        provider="generic", token_url=f"http://127.0.0.1:{port}/token", client_id="c"
    )
    with pytest.raises(TokenUnavailable, match="unreachable"):
        make_provider("main", settings, grants).access_token()
    # A listener that never answers: the timeout applies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/token"
        slow = OAuth2Settings(provider="generic", token_url=url, client_id="c", timeout=0.5)
        with pytest.raises(TokenUnavailable, match="did not answer"):
            make_provider("main", slow, grants).access_token()


def test_no_secret_in_any_error_or_log(
    fake: FakeTokenServer,
    grants: GrantStore,
    secret_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures name the credential, host and error code, never a token or the client
    secret."""
    caplog.set_level("DEBUG")
    refresh = fake.new_refresh_token()
    grants.store("main", "generic", refresh)
    provider = make_provider("main", generic(fake, secret_file), grants)
    token = provider.access_token()
    texts = [repr(token), repr(grants.read("main"))]
    for switch in ("status", "garbage", "fail_with"):
        setattr(
            fake, switch, {"status": 503, "garbage": True, "fail_with": "invalid_grant"}[switch]
        )
        with pytest.raises((TokenUnavailable, ReauthorisationNeeded)) as caught:
            provider.access_token(force=True)
        texts.append(str(caught.value))
        texts.append(repr(caught.value))
        fake.status, fake.garbage = 0, False
    texts.extend(r.getMessage() for r in caplog.records)
    secrets = [CLIENT_SECRET, token.token, *fake.issued_refresh, *fake.issued_access]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_a_wrong_key_stops_this_credential_only_with_a_clear_reason(
    fake: FakeTokenServer, tmp_path: Path, secret_file: Path
) -> None:
    """The grant store raises ConfigError; the provider reports it as the port's
    ReauthorisationNeeded (code config_error, the reason as detail), so the daemon flags this
    account and goes on with the others."""
    grants = GrantStore(tmp_path / "triage.db", tmp_path / "oauth2.key")
    grants.store("main", "generic", fake.new_refresh_token())
    create_key_file(tmp_path / "other.key")
    wrong = GrantStore(tmp_path / "triage.db", tmp_path / "other.key")
    with pytest.raises(ReauthorisationNeeded) as caught:
        make_provider("main", generic(fake, secret_file), wrong).access_token()
    assert caught.value.code == "config_error"
    assert "cannot be decrypted" in caught.value.detail
    assert isinstance(caught.value.__cause__, ConfigError)
    assert fake.token_requests == []


def test_fixing_a_secret_files_mode_is_noticed_without_a_restart(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    grants.store("main", "generic", fake.new_refresh_token())
    secret_file.chmod(0o644)
    provider = make_provider("main", generic(fake, secret_file), grants)
    with pytest.raises(ReauthorisationNeeded, match="open to other users"):
        provider.access_token()
    with pytest.raises(ReauthorisationNeeded):
        provider.access_token()  # nothing changed: the same answer, no request
    assert fake.token_requests == []
    secret_file.chmod(0o600)
    assert provider.access_token().token == fake.issued_access[-1]


def test_google_is_the_refresh_token_grant_with_google_defaults(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    """google: Google's token URL unless overridden, scope https://mail.google.com/."""
    default = OAuth2Settings(provider="google", client_id=CLIENT_ID, client_secret_file=secret_file)
    assert default.effective_token_url() == "https://oauth2.googleapis.com/token"
    settings = default.model_copy(update={"token_url": f"{fake.url}/token"})
    grants.store("g", "google", fake.new_refresh_token())
    make_provider("g", settings, grants).access_token()
    assert fake.token_requests[-1]["scope"] == "https://mail.google.com/"
    stored = grants.read("g")
    assert stored is not None and stored.secret == fake.issued_refresh[-1]


def test_google_service_account_signs_a_jwt_for_the_mailbox_user(
    fake: FakeTokenServer, grants: GrantStore, tmp_path: Path
) -> None:
    """The JWT-bearer grant goes to the key file's token_uri, signed with its key, `sub` the
    mailbox user (or `subject`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    fake.assertion_key = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "triage@project.iam.gserviceaccount.com",
                "private_key": pem,
                "private_key_id": "k1",
                "token_uri": f"{fake.url}/token",
            }
        )
    )
    key_file.chmod(0o600)
    settings = OAuth2Settings(provider="google-service-account", service_account_file=key_file)
    token = make_provider("sa", settings, grants, "hello@example.com").access_token()
    assert token.token == fake.issued_access[-1]
    assert token.seconds_left() > 3000
    assert fake.assertions[-1]["sub"] == "hello@example.com"
    assert fake.assertions[-1]["scope"] == "https://mail.google.com/"
    fake.fail_with = "unauthorized_client"
    with pytest.raises(ReauthorisationNeeded) as caught:
        make_provider("sa", settings, grants, "hello@example.com").access_token()
    assert caught.value.code == "unauthorized_client"
    key_file.chmod(0o644)
    with pytest.raises(ReauthorisationNeeded, match="open to other users"):
        make_provider("sa2", settings, grants, "hello@example.com").access_token()


@pytest.fixture
def https_fake(tmp_path: Path) -> Iterator[tuple[FakeTokenServer, Path]]:
    ca_file, cert, key = make_test_ca(tmp_path)
    with running(FakeTokenServer(), tls=(cert, key)) as server:
        yield server, ca_file


def test_microsoft_app_uses_client_credentials_over_verified_tls(
    https_fake: tuple[FakeTokenServer, Path], grants: GrantStore, secret_file: Path
) -> None:
    """msal against a local HTTPS authority (test CA, no instance discovery)."""
    fake, ca_file = https_fake
    settings = OAuth2Settings(
        provider="microsoft-app",
        tenant=TENANT,
        client_id=CLIENT_ID,
        client_secret_file=secret_file,
        authority=f"{fake.url}/{{tenant}}",
        ca_file=ca_file,
    )
    provider = make_provider("ms", settings, grants, "hello@contoso.example")
    token = provider.access_token()
    assert token.token == fake.issued_access[-1]
    assert fake.token_requests[-1]["grant_type"] == "client_credentials"
    assert fake.token_requests[-1]["scope"] == "https://outlook.office365.com/.default"
    assert provider.access_token(force=True).token == fake.issued_access[-1] != token.token
    # Without the CA the certificate is not trusted: transient, never a silent fallback.
    untrusted = settings.model_copy(update={"ca_file": None})
    with pytest.raises(TokenUnavailable):
        make_provider("ms2", untrusted, grants).access_token()


def test_microsoft_delegated_saves_msal_cache_when_it_changes(
    https_fake: tuple[FakeTokenServer, Path], grants: GrantStore, tmp_path: Path
) -> None:
    """Device-code login stores msal's cache; each refresh's rotated token is saved."""
    from triage.ingest.oauth.login import login

    fake, ca_file = https_fake
    settings = OAuth2Settings(
        provider="microsoft-delegated",
        tenant=TENANT,
        client_id=CLIENT_ID,
        authority=f"{fake.url}/{{tenant}}",
        ca_file=ca_file,
    )
    said: list[str] = []

    def say(text: str) -> None:
        said.append(text)
        fake.approve_devices()

    login("ms", settings, grants, say, timeout=30)
    assert "ABCD-EFGH" in said[0]
    provider = make_provider("ms", settings, grants, "hello@contoso.example")
    for _ in range(3):
        token = provider.access_token(force=True)
        assert token.token == fake.issued_access[-1]
        stored = grants.read("ms")
        assert stored is not None
        assert fake.issued_refresh[-1] in stored.secret
    fake.fail_with = "invalid_grant"
    with pytest.raises(ReauthorisationNeeded) as caught:
        provider.access_token(force=True)
    assert caught.value.code == "invalid_grant"


def test_msal_error_mapping() -> None:
    """AADSTS7000222 (expired secret), 70008 (expired grant), 65001 (consent) need a person;
    throttling and outages do not."""
    expired = {"error": "invalid_client", "error_codes": [7000222]}
    err = msal_error("ms", expired)
    assert isinstance(err, ReauthorisationNeeded) and err.code == "AADSTS7000222"
    grant = msal_error("ms", {"error": "invalid_grant", "error_codes": [70008]})
    assert isinstance(grant, ReauthorisationNeeded) and grant.code == "AADSTS70008"
    consent = msal_error("ms", {"error": "consent_required", "error_codes": [65001]})
    assert isinstance(consent, ReauthorisationNeeded)
    busy = msal_error("ms", {"error": "temporarily_unavailable", "error_codes": [50196]})
    assert isinstance(busy, TokenUnavailable)
    sneaky = msal_error("ms", {"error": "secret-value with spaces"})
    assert "secret-value" not in str(sneaky)


def test_a_rotation_survives_another_process_failing_with_the_old_token_meanwhile(
    fake: FakeTokenServer, tmp_path: Path, secret_file: Path
) -> None:
    """Two processes share a credential (the daemon and `triage doctor`, or `digest --send`)
    and both read the same refresh token. The daemon's refresh rotates it; the other process,
    using the old one a moment later, gets invalid_grant and records needs-reauth before the
    daemon's rotation is saved. Only a state changed, not the grant: the rotated refresh token
    must still be saved (the old one is dead), and the working grant not left in needs-reauth."""
    store_path, key = tmp_path / "triage.db", tmp_path / "oauth2.key"
    daemon_grants, doctor_grants = GrantStore(store_path, key), GrantStore(store_path, key)
    daemon_grants.store("main", "generic", fake.new_refresh_token())
    settings = generic(fake, secret_file)
    daemon = make_provider("main", settings, daemon_grants, "hello")
    doctor = make_provider("main", settings, doctor_grants, "hello")
    doctor_failed: list[ReauthorisationNeeded] = []
    real_rotate = daemon_grants.rotate

    def rotate_after_the_doctor_failed(*args: object, **kwargs: object) -> bool:
        # The doctor read the same (now used) refresh token before the daemon saved its new one.
        with pytest.raises(ReauthorisationNeeded) as caught:
            doctor.access_token()
        doctor_failed.append(caught.value)
        return real_rotate(*args, **kwargs)  # type: ignore[arg-type]

    daemon_grants.rotate = rotate_after_the_doctor_failed  # type: ignore[method-assign]
    daemon.access_token()
    daemon_grants.rotate = real_rotate  # type: ignore[method-assign]

    assert doctor_failed and doctor_failed[0].code == "invalid_grant"
    stored = daemon_grants.read("main")
    assert stored is not None and stored.secret == fake.issued_refresh[-1]
    # The daemon goes on refreshing with the rotated token, and the grant is not reported as
    # needing a person.
    daemon.access_token(force=True)
    row = daemon_grants.row("main")
    assert row is not None and row.state == "ok"


def test_a_new_login_ends_the_reported_needs_reauth_before_the_next_use(
    fake: FakeTokenServer, grants: GrantStore, secret_file: Path
) -> None:
    """`needs_reauth` feeds /healthz and the needs-reauth gauge. The SMTP login's own credential
    is used only when a mail is due, so after `triage auth login smtp` it may not be asked for a
    token for hours: the new grant must end the reported state by itself."""
    grants.store("smtp", "generic", "revoked-token")
    provider = make_provider("smtp", generic(fake, secret_file), grants)
    with pytest.raises(ReauthorisationNeeded):
        provider.access_token()
    before = provider.needs_reauth
    grants.store("smtp", "generic", fake.new_refresh_token())  # the login, in another process
    after = provider.needs_reauth
    assert before is not None and before.code == "invalid_grant"
    assert after is None
    assert provider.access_token().token == fake.issued_access[-1]


def test_a_working_grant_clears_a_needs_reauth_another_process_recorded(
    grants: GrantStore,
) -> None:
    """`triage doctor` run beside the daemon in an environment that cannot use the credential
    (a secret file it may not read, say) records needs-reauth in the shared store. The daemon's
    provider keeps getting tokens (here without a rotation, as with Google or client
    credentials): its next one must end that state, or the administrators get an alert, then a
    reminder every day, about a mailbox that works."""

    class Working(BaseProvider):
        def _fetch(self, *, force: bool) -> AccessToken:
            return self._token("at-works", 3600)

    settings = OAuth2Settings(provider="google", client_id="c", client_secret_file=Path("/x"))
    provider = Working("main", settings, grants)
    provider.access_token()
    grants.mark_needs_reauth("main", "google", "config_error")  # the other process
    provider.access_token(force=True)
    row = grants.row("main")
    assert row is not None and row.state == "ok"


def test_a_stored_grant_msal_cannot_read_needs_a_login_not_a_crash(
    https_fake: tuple[FakeTokenServer, Path], grants: GrantStore
) -> None:
    """A credential switched to microsoft-delegated keeps the grant stored under its former
    provider (a bare refresh token, not msal's cache). msal cannot read it: that credential needs
    `triage auth login`; no other exception may leave the provider (the daemon's housekeeping,
    which sends through the SMTP credential, stops on anything but the port's two errors)."""
    fake, ca_file = https_fake
    settings = OAuth2Settings(
        provider="microsoft-delegated",
        tenant=TENANT,
        client_id=CLIENT_ID,
        authority=f"{fake.url}/{{tenant}}",
        ca_file=ca_file,
    )
    grants.store("ms", "generic", "rt-a-bare-refresh-token")
    with pytest.raises(ReauthorisationNeeded) as caught:
        make_provider("ms", settings, grants, "hello@contoso.example").access_token()
    assert "triage auth login ms" in str(caught.value)
    assert "rt-a-bare-refresh-token" not in str(caught.value)
    row = grants.row("ms")
    assert row is not None and row.state == "needs-reauth"


def test_a_certificate_key_that_cannot_sign_needs_a_person(
    https_fake: tuple[FakeTokenServer, Path], grants: GrantStore, tmp_path: Path
) -> None:
    """microsoft-app with a certificate_key_file that holds no usable private key (a wrong file
    copied in): no retry cures it, so the credential needs a person (an alert, /healthz), not
    a transient error retried in silence or an exception the callers do not expect."""
    fake, ca_file = https_fake
    key = tmp_path / "app.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    settings = OAuth2Settings(
        provider="microsoft-app",
        tenant=TENANT,
        client_id=CLIENT_ID,
        certificate_key_file=key,
        certificate_thumbprint="A" * 40,
        authority=f"{fake.url}/{{tenant}}",
        ca_file=ca_file,
    )
    with pytest.raises(ReauthorisationNeeded) as caught:
        make_provider("ms", settings, grants, "hello@contoso.example").access_token()
    assert caught.value.code == "config_error"
    assert "certificate_key_file" in str(caught.value)
