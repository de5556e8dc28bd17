"""The console's Starlette application: sessions, CSRF, roles, security headers, page routes.

Every page is rendered on the server from the console's own Jinja2 templates (autoescaped: all
a prospect wrote is shown as text) and works without JavaScript; HTMX, served from the package,
only swaps parts of pages. Requests run in Starlette's thread pool, each thread with its own
store connection.

Security, in one place:
- a session is a random id in a signed, HttpOnly, SameSite=Lax cookie (Secure when
  `web.base_url` is https) that names a row of `web_sessions`: logout, a changed password and a
  removed user end it at once; it expires after `web.session_hours`;
- every POST carries the session's CSRF token (a hidden `csrf_token` field, or the
  `X-CSRF-Token` header HTMX sends) or is refused with 403; the login form, before any session,
  uses a double-submit cookie;
- pages need a login (else a redirect to /login); admin pages and admin POSTs answer 403 to
  sales users;
- a strict Content-Security-Policy (scripts, styles and images from the console only, no inline
  script, no framing), X-Frame-Options DENY, nosniff, no referrer to other sites.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import jinja2
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triage.core.errors import TriageError
from triage.core.settings import Settings
from triage.store import users as user_store
from triage.store.db import Database
from triage.store.users import Session, User
from triage.web import accounts

log = logging.getLogger(__name__)
T = TypeVar("T")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "triage_session"
LOGIN_CSRF_COOKIE = "triage_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 512 * 1024  # a template or a note; nothing a person types is larger
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger number names no row
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass
class Console:
    """What every request handler needs: settings, the store (one connection per thread), the
    page templates, and the signing secret."""

    settings: Settings
    config_path: Path | None = None
    _local: threading.local = field(default_factory=threading.local)
    pages: jinja2.Environment = field(init=False)
    signer: URLSafeSerializer = field(init=False)

    def __post_init__(self) -> None:
        self.pages = page_environment()
        self.signer = URLSafeSerializer(self._secret(), salt="triage-session")

    @property
    def db(self) -> Database:
        """This thread's connection to the store."""
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = Database(self.settings.store)
            self._local.db = db
        return db

    def _secret(self) -> str:
        path = self.settings.web.session_secret_file
        if path is not None:
            try:
                with path.open(encoding="utf-8") as fh:
                    # The mode of the file read, as for every password file: others may not read.
                    mode = os.fstat(fh.fileno()).st_mode
                    value = fh.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise TriageError(f"cannot read web.session_secret_file {path}: {exc}") from None
            if stat.S_ISREG(mode) and mode & 0o077:
                raise TriageError(
                    f"web.session_secret_file {path} is open to other users "
                    f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
                )
            if len(value) < 32:
                raise TriageError(f"web.session_secret_file {path}: needs at least 32 characters")
            return value
        with self.db.transaction() as c:
            return user_store.secret(c, "session", secrets.token_urlsafe(48), datetime.now(UTC))

    async def run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`func(db, *args, **kwargs)` in the thread pool, with that thread's store connection:
        how a handler calls a domain function (the store is blocking, SQLite per thread)."""
        return await run_in_threadpool(lambda: func(self.db, *args, **kwargs))

    @property
    def secure_cookies(self) -> bool:
        """Cookies only over https when the console's public address is https."""
        return self.settings.web.base_url.startswith("https://")

    @property
    def policy(self) -> accounts.LoginPolicy:
        """The failed-login limits from the settings."""
        web = self.settings.web
        return accounts.LoginPolicy(web.max_failed_logins, timedelta(minutes=web.lockout_minutes))

    def render(
        self, request: Request, name: str, context: Mapping[str, Any], status: int = 200
    ) -> HTMLResponse:
        """Page `name` with `context`, plus the logged-in user and CSRF token when there are."""
        session: Session | None = request.scope.get("triage.session")
        values = {
            "request": request,
            "user": session.user if session else None,
            "csrf_token": session.csrf_token if session else "",
            "path": request.url.path,
            **context,
        }
        html = self.pages.get_template(name).render(values)
        return HTMLResponse(html, status_code=status)


def page_environment() -> jinja2.Environment:
    """The console's own page templates: autoescaped always, strict about missing values."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["urlquote"] = lambda value: quote(str(value), safe="")
    return env


# --- sessions and CSRF ----------------------------------------------------------------------


def current_session(console: Console, request: Request) -> Session | None:
    """The live session the request's cookie names, or None."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        session_id = console.signer.loads(cookie)
    except BadSignature:
        return None
    if not isinstance(session_id, str):
        return None
    return user_store.find_session(console.db.reads, session_id, datetime.now(UTC))


def start_session(console: Console, user: User) -> tuple[str, Session]:
    """A new session for `user`: (the cookie value, the session)."""
    now = datetime.now(UTC)
    session_id = secrets.token_urlsafe(32)
    token = secrets.token_urlsafe(32)
    expires = now + timedelta(hours=console.settings.web.session_hours)
    with console.db.transaction() as c:
        user_store.open_session(c, session_id, user.id, token, now, expires)
    found = user_store.find_session(console.db.reads, session_id, now)
    assert found is not None
    return console.signer.dumps(session_id), found


def end_session(console: Console, session: Session) -> None:
    """Logout: the session row goes, so the cookie is worth nothing even if kept."""
    with console.db.transaction() as c:
        user_store.close_session(c, session.id)


def set_session_cookie(console: Console, response: Response, value: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure under https, for the session's life."""
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(console.settings.web.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=console.secure_cookies,
        path="/",
    )


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens (empty never matches)."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


async def read_form(request: Request) -> FormData:
    """The request's form, refused with 413 above MAX_FORM_BYTES."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise HTTPException(413, "form too large")
    received = 0

    async def receive() -> Message:
        # A chunked body has no Content-Length to check: count what arrives instead.
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
        return message

    limited = Request(request.scope, receive)
    return await limited.form(max_files=0, max_fields=200, max_part_size=MAX_FORM_BYTES)


async def check_csrf(request: Request, session: Session) -> FormData:
    """The form of a POST whose CSRF token is the session's; 403 otherwise."""
    form = await read_form(request)
    given = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD) or "")
    if not same(given, session.csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page and try again")
    return form


# --- handlers -------------------------------------------------------------------------------

Handler = Callable[[Request, "Console"], Awaitable[Response]]


@dataclass(frozen=True)
class Page:
    """One route of the console: its path, methods, handler, and whether only admins may use it.

    `handler(request, console)` runs after the login, role and (for POST) CSRF checks; a POST
    handler reads the already-checked form with `request.state.form`.
    """

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)
    admin: bool = False
    name: str | None = None


def _wrap(console: Console, page: Page) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        session = await run_in_threadpool(current_session, console, request)
        if session is None:
            if request.method == "GET":
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
            raise HTTPException(401, "log in first")
        request.scope["triage.session"] = session
        if page.admin and not session.user.is_admin:
            raise HTTPException(403, "this page is for admins")
        if any(isinstance(v, int) and v > MAX_ID for v in request.path_params.values()):
            raise HTTPException(404, "no such page")  # /leads/{id} with an id no row can have
        if request.method == "POST":
            request.state.form = await check_csrf(request, session)
        return await page.handler(request, console)

    return endpoint


def whole_number(value: str) -> int | None:
    """`value` as a number of a row (ASCII digits, at most MAX_ID), else None. `str.isdigit`
    alone takes "²", which `int` refuses, and SQLite refuses what passes MAX_ID."""
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_ID:
        return None
    return int(value)


def user_of(request: Request) -> User:
    """The logged-in user of a request that passed the login check."""
    session: Session = request.scope["triage.session"]
    return session.user


def safe_next(target: str) -> str:
    """A local path to go to after login; anything else (another site, a scheme) is "/"."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target:
        return "/"
    return target


async def login_page(request: Request) -> Response:
    console: Console = request.app.state.console
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = console.render(
        request,
        "login.html",
        {
            "login_token": token,
            "next": safe_next(request.query_params.get("next", "/")),
            "error": "",
            "name": "",
        },
    )
    _set_login_cookie(console, response, token)
    return response


def _set_login_cookie(console: Console, response: Response, token: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=console.secure_cookies,
        path="/login",
    )


async def login_submit(request: Request) -> Response:
    console: Console = request.app.state.console
    form = await read_form(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not same(str(form.get(CSRF_FIELD) or ""), cookie):
        raise HTTPException(403, "missing or wrong CSRF token; reload the login page")
    name = str(form.get("username") or "")
    password = str(form.get("password") or "")
    target = safe_next(str(form.get("next") or "/"))
    address = request.client.host if request.client else ""
    try:
        user = await console.run(accounts.login, name, password, address, console.policy)
    except accounts.AccountError as exc:
        fresh = secrets.token_urlsafe(32)
        refused = console.render(
            request,
            "login.html",
            {"login_token": fresh, "next": target, "error": str(exc), "name": name},
            status=401,
        )
        _set_login_cookie(console, refused, fresh)
        return refused
    # The session this browser still had (another user's, say) ends with the new login.
    previous = await run_in_threadpool(current_session, console, request)
    if previous is not None:
        await run_in_threadpool(end_session, console, previous)
    cookie_value, _session = await run_in_threadpool(start_session, console, user)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(console, response, cookie_value)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


async def logout(request: Request, console: Console) -> Response:
    session: Session = request.scope["triage.session"]
    await run_in_threadpool(end_session, console, session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def home(request: Request, console: Console) -> Response:
    return RedirectResponse("/leads", status_code=303)


# --- the application ------------------------------------------------------------------------


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for key, value in SECURITY_HEADERS.items():
                    if key.encode() not in present:
                        headers.append((key.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, add_headers)


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    console: Console = request.app.state.console
    return console.render(
        request,
        "error.html",
        {"status": exc.status_code, "detail": exc.detail},
        status=exc.status_code,
    )


def core_pages() -> list[Page]:
    """The pages of the console itself (login is outside: it needs no session)."""
    return [
        Page("/", home),
        Page("/logout", logout, methods=("POST",)),
    ]


def all_pages() -> list[Page]:
    """Every page of the console, from each view module."""
    from triage.web.views import PAGES

    return [*core_pages(), *PAGES]


def build_app(
    settings: Settings, *, config_path: Path | None = None, pages: list[Page] | None = None
) -> Starlette:
    """The console application over `settings.store`."""
    console = Console(settings, config_path)
    routes: list[BaseRoute] = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    for page in pages if pages is not None else all_pages():
        routes.append(
            Route(page.path, _wrap(console, page), methods=list(page.methods), name=page.name)
        )
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: _error},
    )
    app.state.console = console
    return app
