"""The providers and `triage auth login` against the project's OAuth2 test server
(devtools/oauthserver.py): the same server the harness's Dovecot and Postfix ask about tokens,
over http for the generic flows and https with its test CA for msal."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from triage.core.errors import ReauthorisationNeeded, TokenUnavailable
from triage.core.settings import OAuth2Settings
from triage.ingest.oauth.grants import GrantStore
from triage.ingest.oauth.login import login
from triage.ingest.oauth.providers import make_provider

if TYPE_CHECKING:
    from devtools.oauthserver import OAuthServer
else:
    # The test server comes with the mail harness's OAuth2 support; skipped where it is absent.
    OAuthServer = pytest.importorskip("devtools.oauthserver").OAuthServer

SECRET = "s3cret-of-the-client"


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(access_ttl=60) as running:
        running.register_client("triage", SECRET)
        yield running


@pytest.fixture
def https_server() -> Iterator[OAuthServer]:
    with OAuthServer(https=True, access_ttl=60) as running:
        running.register_client("triage", SECRET)
        yield running


@pytest.fixture
def grants(tmp_path: Path) -> GrantStore:
    return GrantStore(tmp_path / "triage.db", tmp_path / "oauth2.key")


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client.secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def generic(server: OAuthServer, secret_file: Path, **extra: object) -> OAuth2Settings:
    return OAuth2Settings.model_validate(
        {
            "provider": "generic",
            "token_url": server.token_url,
            "authorize_url": server.authorize_url,
            "client_id": "triage",
            "client_secret_file": secret_file,
            "scope": ["imap", "smtp"],
        }
        | extra
    )


def test_generic_keeps_the_latest_rotated_refresh_token(
    server: OAuthServer, grants: GrantStore, secret_file: Path
) -> None:
    grants.store("main", "generic", server.grant("triage", "hello", scope="imap smtp"))
    provider = make_provider("main", generic(server, secret_file), grants, "hello")
    for _ in range(4):
        provider.access_token(force=True)
        stored = grants.read("main")
        assert stored is not None and stored.secret == server.latest_refresh_token("hello")
    server.set_down(True)
    with pytest.raises(TokenUnavailable):
        provider.access_token(force=True)
    server.set_down(False)
    server.fail_grants("hello", "invalid_grant")
    with pytest.raises(ReauthorisationNeeded) as caught:
        provider.access_token(force=True)
    assert caught.value.code == "invalid_grant"


def test_loopback_login_then_refresh(
    server: OAuthServer, grants: GrantStore, secret_file: Path
) -> None:
    server.auto_approve = "hello"
    settings = generic(server, secret_file)

    def browser(text: str) -> None:
        if text.startswith("Open this address"):
            url = text.splitlines()[-1]
            opened = threading.Thread(target=lambda: urllib.request.urlopen(url).close())  # noqa: S310
            opened.start()

    login("main", settings, grants, browser, timeout=20)
    stored = grants.read("main")
    assert stored is not None and stored.secret == server.latest_refresh_token("hello")
    make_provider("main", settings, grants, "hello").access_token()


def test_device_login(server: OAuthServer, grants: GrantStore, secret_file: Path) -> None:
    server.auto_approve = "hello"
    settings = generic(
        server, secret_file, device_authorization_url=server.device_authorization_url
    )
    login("main", settings, grants, lambda _text: None, timeout=20)
    stored = grants.read("main")
    assert stored is not None and stored.secret == server.latest_refresh_token("hello")


def test_microsoft_app_with_secret_and_with_certificate(
    https_server: OAuthServer, grants: GrantStore, secret_file: Path, tmp_path: Path
) -> None:
    server = https_server
    server.grant_app("triage", "hello")
    common = {
        "provider": "microsoft-app",
        "tenant": "contoso",
        "client_id": "triage",
        "authority": server.authority("{tenant}"),
        "ca_file": server.ca_file,
    }
    with_secret = OAuth2Settings.model_validate(common | {"client_secret_file": secret_file})
    assert make_provider("ms", with_secret, grants, "hello").access_token().token

    cert, key = _certificate(tmp_path)
    server.register_client("cert-app", public_key_pem=cert.read_bytes())
    server.grant_app("cert-app", "hello")
    with_cert = OAuth2Settings.model_validate(
        common | {"client_id": "cert-app", "certificate_file": cert, "certificate_key_file": key}
    )
    assert make_provider("ms-cert", with_cert, grants, "hello").access_token().token


def test_microsoft_delegated_device_login_and_rotation(
    https_server: OAuthServer, grants: GrantStore
) -> None:
    server = https_server
    server.register_client("public-app")
    server.auto_approve = "hello"
    settings = OAuth2Settings(
        provider="microsoft-delegated",
        tenant="contoso",
        client_id="public-app",
        authority=server.authority("{tenant}"),
        ca_file=server.ca_file,
    )
    said: list[str] = []
    login("ms", settings, grants, said.append, timeout=30)
    assert said and "enter the code" in said[0]
    provider = make_provider("ms", settings, grants, "hello")
    for _ in range(3):
        provider.access_token(force=True)
        stored = grants.read("ms")
        latest = server.latest_refresh_token("hello")
        assert stored is not None and latest is not None and latest in stored.secret
    server.fail_grants("hello", "invalid_grant")
    with pytest.raises(ReauthorisationNeeded):
        provider.access_token(force=True)


def test_google_service_account(server: OAuthServer, grants: GrantStore, tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(server.make_service_account("triage@project.example")))
    key_file.chmod(0o600)
    settings = OAuth2Settings(provider="google-service-account", service_account_file=key_file)
    token = make_provider("g", settings, grants, "hello").access_token()
    status, answer = server.post("/introspect", {"token": token.token})
    assert status == 200 and answer["active"] and answer["username"] == "hello"


def _certificate(directory: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "triage app")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "app.pem", directory / "app.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file
