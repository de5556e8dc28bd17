"""OAuth2 in the mail harness: real Dovecot and Postfix checking tokens of the local OAuth2
server (devtools.oauthserver) by introspection, over real HTTP; and that server's grants."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from devtools.mailharness import HarnessConfig, MailHarness
from devtools.oauthserver import DEVICE_CODE_GRANT, JWT_BEARER_GRANT, OAuthServer
from tests.mailtools import running_harness
from triage.ingest.oauth.tokens import b64, oauthbearer_response, xoauth2_response

pytestmark = pytest.mark.mail

CLIENT, SECRET = "triage-tests", "client-secret-for-tests"
SCOPE = "imap smtp"


def refresh_grant(oauth: OAuthServer, refresh_token: str) -> tuple[int, dict[str, Any]]:
    """POST /token grant_type=refresh_token as the test client (HTTP Basic)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return oauth.post("/token", form, basic=(CLIENT, SECRET))


def access_token_for(oauth: OAuthServer, user: str) -> str:
    """A fresh access token for `user` the way triage gets one: a consent, then a refresh."""
    oauth.register_client(CLIENT, SECRET)
    status, answer = refresh_grant(oauth, oauth.grant(CLIENT, user, scope=SCOPE))
    assert status == 200, answer
    assert answer["expires_in"] == round(oauth.access_ttl)
    return str(answer["access_token"])


def imap_client(harness: MailHarness) -> IMAPClient:
    cfg = harness.config
    return IMAPClient(cfg.host, port=cfg.imap_port, ssl=False, timeout=10)


def imap_oauth_login(harness: MailHarness, user: str, token: str, bearer: bool = False) -> bool:
    """True when Dovecot accepts the token for `user` (XOAUTH2, or OAUTHBEARER)."""
    client = imap_client(harness)
    try:
        if bearer:
            client.oauthbearer_login(user, token)
        else:
            client.oauth2_login(user, token)
        assert client.noop()
    except LoginError:
        return False
    finally:
        client.shutdown()
    return True


def smtp_auth(harness: MailHarness, mechanism: str, response: bytes) -> tuple[int, bytes]:
    """`AUTH <mechanism> <initial response>` on the submission port after STARTTLS; on the
    error challenge (334) answer an empty line, as RFC 7628 asks. Returns the final reply."""
    cfg = harness.config
    with smtplib.SMTP(cfg.host, cfg.submission_port, timeout=10) as smtp:
        smtp.starttls(context=harness.ssl_context())
        smtp.ehlo()
        code, message = smtp.docmd("AUTH", f"{mechanism} {b64(response)}")
        if code == 334:
            code, message = smtp.docmd("")
        if code == 235:
            hello = harness.address("hello")
            assert smtp.sendmail(hello, [hello], b"Subject: by token\r\n\r\nhi\r\n") == {}
        return code, message


def test_oauth2_off_leaves_the_dovecot_configuration_as_it_was() -> None:
    """Without an introspection URL the harness writes no oauth2 passdb, offers only PLAIN and
    LOGIN, and does not restrict its passwd-file passdb; with one, both passdbs split the
    mechanisms between them."""
    # Nothing is written or started: the folders are only named.
    off = MailHarness(HarnessConfig(base_dir=Path("/tmp/triage-oauth-off")))
    text = off._dovecot_conf(8)
    assert "auth_mechanisms = plain login\n" in text
    assert "oauth2" not in text and "  mechanisms = plain login" not in text
    assert off.oauth2_conf not in off._server_files(8)
    on = MailHarness(
        HarnessConfig(Path("/tmp/triage-oauth-on"), oauth2_introspection_url="http://127.0.0.1:9/i")
    )
    text = on._dovecot_conf(8)
    assert "auth_mechanisms = plain login xoauth2 oauthbearer\n" in text
    assert "  mechanisms = plain login\n" in text
    assert "  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n" in text
    assert "introspection_url = http://127.0.0.1:9/i\n" in on._server_files(8)[on.oauth2_conf]


def test_imap_xoauth2_and_oauthbearer_accept_a_fresh_token(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """A token from the refresh grant logs `hello` in over IMAP with XOAUTH2 and with
    OAUTHBEARER, named by local part or by address; Dovecot introspects each login (no auth
    cache) and the server saw it active for hello. Dovecot compares users on the local part."""
    token = access_token_for(oauth, "hello")
    before = oauth.calls("introspect")
    assert imap_oauth_login(mail_harness, "hello", token)
    assert imap_oauth_login(mail_harness, mail_harness.address("hello"), token)
    assert imap_oauth_login(mail_harness, "hello", token, bearer=True)
    assert oauth.calls("introspect") == before + 3
    assert oauth.introspections()[-3:] == [("hello", True)] * 3
    # A token bound to the address (as Microsoft and Google name users) is the same user.
    assert imap_oauth_login(mail_harness, "hello", oauth.issue_access_token("hello@example.test"))


def test_imap_refuses_expired_unknown_and_foreign_tokens(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """A token past its lifetime, a token the server never issued, and bob's token presented
    for hello are all refused, each after one introspection."""
    oauth.access_ttl = 2.0
    issued = time.monotonic()
    short = access_token_for(oauth, "hello")
    assert imap_oauth_login(mail_harness, "hello", short)
    time.sleep(max(0.0, issued + 2.2 - time.monotonic()))
    before = oauth.calls("introspect")
    assert not imap_oauth_login(mail_harness, "hello", short)
    assert not imap_oauth_login(mail_harness, "hello", short, bearer=True)
    assert not imap_oauth_login(mail_harness, "hello", secrets.token_urlsafe(32))
    bobs = oauth.issue_access_token("bob")
    assert not imap_oauth_login(mail_harness, "hello", bobs)
    assert imap_oauth_login(mail_harness, "bob", bobs)
    assert oauth.calls("introspect") == before + 5
    # bob's token is active (for bob): Dovecot itself refuses it for hello.
    assert oauth.introspections()[-5:] == [(None, False)] * 3 + [("bob", True)] * 2


def test_submission_offers_and_accepts_xoauth2_and_oauthbearer(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """After STARTTLS the submission service lists XOAUTH2 and OAUTHBEARER beside PLAIN and
    LOGIN (Dovecot's mechanisms through smtpd_sasl_type = dovecot); a good token sends mail,
    a bad one gets the error challenge and then 535 once answered with an empty line."""
    harness = mail_harness
    cfg = harness.config
    with smtplib.SMTP(cfg.host, cfg.submission_port, timeout=10) as smtp:
        smtp.starttls(context=harness.ssl_context())
        smtp.ehlo()
        assert set(smtp.esmtp_features["auth"].upper().split()) == {
            "PLAIN",
            "LOGIN",
            "XOAUTH2",
            "OAUTHBEARER",
        }
    token = access_token_for(oauth, "hello")
    user = harness.address("hello")
    before = oauth.calls("introspect")
    assert smtp_auth(harness, "XOAUTH2", xoauth2_response(user, token))[0] == 235
    bearer = oauthbearer_response(user, token, cfg.host, cfg.submission_port)
    assert smtp_auth(harness, "OAUTHBEARER", bearer)[0] == 235
    assert smtp_auth(harness, "XOAUTH2", xoauth2_response(user, "not-a-token"))[0] == 535
    bad_bearer = oauthbearer_response(user, "not-a-token", cfg.host, cfg.submission_port)
    assert smtp_auth(harness, "OAUTHBEARER", bad_bearer)[0] == 535
    assert oauth.calls("introspect") == before + 4
    harness.wait_for_messages("hello", count=2)


def test_introspection_outage_is_a_temporary_failure(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """While the introspection endpoint answers 503, IMAP says UNAVAILABLE (temporary), not
    AUTHENTICATIONFAILED, and Postfix refuses AUTH with 535 at once, without the error
    challenge; the same token works again once the endpoint is back."""
    token = access_token_for(oauth, "hello")
    oauth.set_introspection_down(True)
    client = imap_client(mail_harness)
    with pytest.raises(LoginError, match=r"\[UNAVAILABLE\]"):
        client.oauth2_login("hello", token)
    client.shutdown()
    user = mail_harness.address("hello")
    code, message = smtp_auth(mail_harness, "XOAUTH2", xoauth2_response(user, token))
    assert (code, message) == (535, b"5.7.8 Error: authentication failed: (reason unavailable)")
    oauth.set_introspection_down(False)
    assert imap_oauth_login(mail_harness, "hello", token)


def test_passwords_still_work_and_are_never_introspected(
    clean_mail: MailHarness, oauth: OAuthServer
) -> None:
    """Password logins (IMAP LOGIN, SMTP AUTH PLAIN) work beside OAuth2, and a token sent as a
    password is refused without asking the introspection endpoint."""
    harness = clean_mail
    token = access_token_for(oauth, "hello")
    before = oauth.calls("introspect")
    with harness.imap("hello") as client:
        assert client.noop()
    client = imap_client(harness)
    with pytest.raises(LoginError):
        client.login("hello", token)
    client.shutdown()
    cfg = harness.config
    with smtplib.SMTP(cfg.host, cfg.submission_port, timeout=10) as smtp:
        smtp.starttls(context=harness.ssl_context())
        assert smtp.login("hello", harness.password("hello"))[0] == 235
    assert oauth.calls("introspect") == before


def test_refresh_token_rotates_on_every_use(oauth: OAuthServer) -> None:
    """Each refresh grant answers a new refresh token and kills the one used (invalid_grant
    from then on); the server keeps them in order and `latest_refresh_token` is the live one."""
    oauth.register_client(CLIENT, SECRET)
    first = oauth.grant(CLIENT, "carol", scope=SCOPE)
    status, answer = refresh_grant(oauth, first)
    assert status == 200
    second = answer["refresh_token"]
    assert second != first
    assert refresh_grant(oauth, first) == (
        400,
        {"error": "invalid_grant", "error_description": "refresh token invalid, used or revoked"},
    )
    status, answer = refresh_grant(oauth, second)
    assert status == 200
    assert oauth.refresh_tokens_issued("carol")[-3:] == [first, second, answer["refresh_token"]]
    assert oauth.latest_refresh_token("carol") == answer["refresh_token"]
    # A wrong client secret is the client's fault, not the grant's.
    status, answer = oauth.post(
        "/token",
        {"grant_type": "refresh_token", "refresh_token": answer["refresh_token"]},
        basic=(CLIENT, "wrong"),
    )
    assert (status, answer["error"]) == (401, "invalid_client")


def test_switches_fail_grants_down_and_revoke(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """`fail_grants` answers invalid_grant for one user only (and consumes nothing);
    `set_down` answers 503 on the token endpoint while logins with issued tokens still work;
    `revoke_all` kills a user's access and refresh tokens."""
    oauth.register_client(CLIENT, SECRET)
    hello_refresh = oauth.grant(CLIENT, "hello", scope=SCOPE)
    bob_refresh = oauth.grant(CLIENT, "bob", scope=SCOPE)
    oauth.fail_grants("hello")
    status, answer = refresh_grant(oauth, hello_refresh)
    assert (status, answer["error"]) == (400, "invalid_grant")
    status, answer = refresh_grant(oauth, bob_refresh)
    assert status == 200
    bob_refresh = answer["refresh_token"]
    oauth.clear_failures()
    status, answer = refresh_grant(oauth, hello_refresh)
    assert status == 200
    hello_refresh, hello_token = answer["refresh_token"], answer["access_token"]

    oauth.set_down(True)
    status, answer = refresh_grant(oauth, bob_refresh)
    assert (status, answer["error"]) == (503, "temporarily_unavailable")
    assert imap_oauth_login(mail_harness, "hello", hello_token)
    oauth.set_down(False)

    oauth.revoke_all("hello")
    assert not imap_oauth_login(mail_harness, "hello", hello_token)
    assert refresh_grant(oauth, hello_refresh)[0] == 400
    assert refresh_grant(oauth, bob_refresh)[0] == 200


def test_authorization_code_flow_with_pkce(oauth: OAuthServer) -> None:
    """GET /authorize is refused (403) until a user approves; then it redirects to the loopback
    redirect_uri with a code and the state, and the code (once, with the PKCE verifier) gives
    tokens for that user."""
    oauth.register_client("installed-app")
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode()
    redirect = "http://127.0.0.1:8765/"
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": "installed-app",
            "redirect_uri": redirect,
            "scope": "https://mail.google.com/",
            "state": "xyz",
            "code_challenge": challenge.rstrip("="),
            "code_challenge_method": "S256",
        }
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def authorize() -> tuple[int, dict[str, str]]:
        """GET /authorize without following the redirect: (status, redirect parameters)."""
        try:
            opener.open(f"{oauth.authorize_url}?{query}", timeout=5).close()
        except urllib.error.HTTPError as exc:
            with exc:
                location = urllib.parse.urlsplit(exc.headers.get("Location") or "")
                if exc.code == 302:
                    assert location._replace(query="").geturl() == redirect
                return exc.code, dict(urllib.parse.parse_qsl(location.query))
        raise AssertionError("/authorize answered 200")

    assert authorize() == (403, {})
    oauth.approve_next("alice")
    status, params = authorize()
    assert status == 302
    assert params["state"] == "xyz"
    form = {
        "grant_type": "authorization_code",
        "client_id": "installed-app",
        "code": params["code"],
        "redirect_uri": redirect,
    }
    assert oauth.post("/token", {**form, "code_verifier": "wrong"})[1]["error"] == "invalid_grant"
    # The failed attempt used the code up too (codes are single-use); ask again.
    oauth.approve_next("alice")
    code = authorize()[1]["code"]
    status, answer = oauth.post("/token", {**form, "code": code, "code_verifier": verifier})
    assert status == 200
    assert oauth.latest_refresh_token("alice") == answer["refresh_token"]
    assert oauth.post("/token", {**form, "code": code, "code_verifier": verifier})[0] == 400


def test_device_flow_is_pending_until_approved(oauth: OAuthServer) -> None:
    """RFC 8628: polling answers authorization_pending until the test approves the user code,
    then tokens for the approving user, once."""
    oauth.register_client("device-app")
    status, flow = oauth.post("/device", {"client_id": "device-app", "scope": SCOPE})
    assert status == 200
    assert flow["user_code"] in oauth.pending_user_codes()
    poll = {
        "grant_type": DEVICE_CODE_GRANT,
        "client_id": "device-app",
        "device_code": flow["device_code"],
    }
    assert oauth.post("/token", poll) == (
        400,
        {"error": "authorization_pending", "error_description": "the user has not approved yet"},
    )
    oauth.approve_device(flow["user_code"], "sales")
    status, answer = oauth.post("/token", poll)
    assert status == 200
    assert oauth.latest_refresh_token("sales") == answer["refresh_token"]
    assert oauth.post("/token", poll)[1]["error"] == "invalid_grant"


def _rs256(claims: dict[str, Any], private_key_pem: str) -> str:
    """A JWT signed RS256, as Google's service-account libraries make them."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_service_account_jwt_bearer_acts_for_its_subject(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """RFC 7523: a JWT signed by a registered service-account key with `sub` = a mailbox gives
    a token Dovecot accepts for that mailbox; a wrongly signed one is invalid_grant."""
    pytest.importorskip("cryptography")
    account = oauth.make_service_account("robot@triage-tests.iam.example")
    now = int(time.time())
    claims = {
        "iss": account["client_email"],
        "sub": "other",
        "aud": account["token_uri"],
        "scope": "https://mail.google.com/",
        "iat": now,
        "exp": now + 3600,
    }
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": _rs256(claims, account["private_key"])}
    status, answer = oauth.post("/token", form)
    assert status == 200
    assert "refresh_token" not in answer
    assert imap_oauth_login(mail_harness, "other", answer["access_token"])
    stranger = oauth.make_service_account("stranger@triage-tests.iam.example")
    forged = _rs256(claims, stranger["private_key"])
    assert oauth.post("/token", {**form, "assertion": forged})[1]["error"] == "invalid_grant"


# -- msal against the server over https, and Dovecot introspecting over https ------------------


@pytest.fixture(scope="module")
def https_oauth() -> Iterator[OAuthServer]:
    """An https OAuthServer with its own test CA (msal refuses http authorities)."""
    pytest.importorskip("cryptography")
    with OAuthServer(https=True, access_ttl=30.0) as server:
        yield server


@pytest.fixture(scope="module")
def https_harness(https_oauth: OAuthServer) -> Iterator[MailHarness]:
    """A harness of its own whose Dovecot introspects at the https server, verifying its CA."""
    yield from running_harness(
        oauth2_introspection_url=https_oauth.introspection_url,
        oauth2_ca_file=str(https_oauth.ca_file),
    )


def test_msal_client_credentials_over_https(
    https_oauth: OAuthServer, https_harness: MailHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """msal's ConfidentialClientApplication gets an app token from the Microsoft-shaped
    endpoints (instance discovery off, the test CA as `verify`), and Dovecot, introspecting
    over https against the same CA, lets the app into the mailbox it was granted."""
    msal = pytest.importorskip("msal")
    # requests lets REQUESTS_CA_BUNDLE (set on many machines, this one included) override a
    # session's `verify`, so msal's verify= alone is not enough: point the variable at the CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_oauth.ca_file))
    https_oauth.register_client("m365-app", "app-secret")
    https_oauth.grant_app("m365-app", "hello")
    app = msal.ConfidentialClientApplication(
        "m365-app",
        client_credential="app-secret",
        authority=https_oauth.authority("contoso"),
        instance_discovery=False,
        validate_authority=False,
        verify=str(https_oauth.ca_file),
    )
    result = app.acquire_token_for_client(scopes=["https://outlook.office365.com/.default"])
    assert "access_token" in result, result.get("error_description")
    assert result["expires_in"] == 30
    assert imap_oauth_login(https_harness, "hello", result["access_token"])
    assert not imap_oauth_login(https_harness, "bob", result["access_token"])
    assert https_oauth.calls("discovery") >= 1


def test_msal_device_flow_then_refresh_token_over_https(
    https_oauth: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """msal's PublicClientApplication runs the device flow (the test approves the user code)
    and then `acquire_token_by_refresh_token`, which rotates the refresh token."""
    msal = pytest.importorskip("msal")
    # requests lets REQUESTS_CA_BUNDLE (set on many machines, this one included) override a
    # session's `verify`, so msal's verify= alone is not enough: point the variable at the CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_oauth.ca_file))
    https_oauth.register_client("m365-public")
    app = msal.PublicClientApplication(
        "m365-public",
        authority=https_oauth.authority("contoso"),
        instance_discovery=False,
        validate_authority=False,
        verify=str(https_oauth.ca_file),
    )
    scopes = ["https://outlook.office365.com/IMAP.AccessAsUser.All"]
    flow = app.initiate_device_flow(scopes=scopes)
    assert "user_code" in flow, flow
    https_oauth.approve_device(flow["user_code"], "hello")
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result.get("error_description")
    first_refresh = result["refresh_token"]
    assert https_oauth.latest_refresh_token("hello") == first_refresh
    again = app.acquire_token_by_refresh_token(first_refresh, scopes=scopes)
    assert "access_token" in again, again.get("error_description")
    assert again["refresh_token"] != first_refresh
    assert https_oauth.latest_refresh_token("hello") == again["refresh_token"]
    refused = app.acquire_token_by_refresh_token(first_refresh, scopes=scopes)
    assert refused.get("error") == "invalid_grant"


def test_msal_certificate_credential_over_https(
    https_oauth: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """msal's certificate credential (a client_assertion JWT signed by the app's key, the
    certificate's thumbprint in its header) is accepted for a client registered with that
    certificate, and refused for one registered with another."""
    msal = pytest.importorskip("msal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_oauth.ca_file))
    key_pem, cert_pem, thumbprint = self_signed_certificate()
    https_oauth.register_client("m365-cert-app", public_key_pem=cert_pem)
    https_oauth.grant_app("m365-cert-app", "hello")
    https_oauth.register_client("m365-other-app", public_key_pem=self_signed_certificate()[1])
    scopes = ["https://outlook.office365.com/.default"]
    for client_id, accepted in (("m365-cert-app", True), ("m365-other-app", False)):
        app = msal.ConfidentialClientApplication(
            client_id,
            client_credential={"private_key": key_pem, "thumbprint": thumbprint},
            authority=https_oauth.authority("contoso"),
            instance_discovery=False,
            validate_authority=False,
        )
        result = app.acquire_token_for_client(scopes=scopes)
        assert ("access_token" in result) is accepted, result
        if not accepted:
            assert result["error"] == "invalid_client"


def self_signed_certificate() -> tuple[str, bytes, str]:
    """(private key PEM, certificate PEM, SHA-1 thumbprint hex) of a new RSA certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "triage test app")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    thumbprint = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - what msal's x5t names
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), thumbprint
