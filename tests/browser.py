"""What the console's real-browser tests share: Debian's chromium, a real `triage web`, helpers.

The browser is the `chromium` that scripts/bootstrap installs with apt, driven by Playwright for
Python through `executable_path` (a browser downloaded by `playwright install` is never used).
Without chromium or Playwright the tests that use these fixtures are skipped with the reason.

Fixtures, named `browser`, `page` and `web_server` (registered once, in tests/conftest.py: a
test module that imported them again would start a second Playwright in the same thread):
- `browser`: one headless chromium for the session;
- `page`: a fresh page (own cookies) with a fixed 1280×800 viewport and a default timeout, whose
  console messages, page errors, CSP violations and requests are recorded: `log_of(page)`;
- `web_server`: `triage web` started as a real process on a free port of 127.0.0.1 over a new
  store (users `sam`, sales, and `ada`, admin, both with PASSWORD, the repository's templates
  copied under tmp_path); its `.store` fills that store as the pipeline would, its `.url` is
  where it listens. `start_web(config)` starts one over a configuration of your own.

`screenshot(page, name)` writes docs/screenshots/NAME.png, but only when TRIAGE_SCREENSHOTS=1:
otherwise tests never write into the repository.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devtools.demo import answers
from tests.test_leads import Store, make_settings
from tests.web_support import PASSWORD
from triage.core.settings import Settings
from triage.web import accounts

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
DEFAULT_TIMEOUT_MS = 10_000
START_TIMEOUT_S = 30.0

# Records every CSP violation in the page; Playwright adds init scripts through the DevTools
# protocol, outside the page's CSP, so this runs although the console forbids inline script.
_CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""


# --- the browser -----------------------------------------------------------------------------


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )


@pytest.fixture(scope="session", name="browser")
def browser_fixture() -> Iterator[Browser]:
    """One headless Debian chromium for the test session."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (pip: playwright)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (scripts/bootstrap installs it with apt)")
    # Root has no user namespace sandbox in a container; chromium refuses to start without this.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    args += ["--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking"]
    manager = sync_api.sync_playwright().start()
    try:
        launched: Browser = manager.chromium.launch(
            executable_path=executable, headless=True, args=args
        )
        yield launched
        launched.close()
    finally:
        manager.stop()


@dataclass
class PageLog:
    """What a page did: console messages (type, text), uncaught errors, requested URLs, and the
    responses with an error status (status, URL)."""

    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def console_errors(self) -> list[str]:
        """Console messages of type error or warning (CSP refusals are errors)."""
        return [text for kind, text in self.console if kind in ("error", "warning")]


_LOGS: dict[int, PageLog] = {}


def log_of(page: Page) -> PageLog:
    """The record of a page made by the `page` fixture (or `new_page`)."""
    return _LOGS[id(page)]


def csp_violations(page: Page) -> list[str]:
    """The CSP violations the page's current document reported (directive and blocked URI)."""
    found: list[str] = page.evaluate("() => window.__cspViolations || []")
    return found


def new_page(browser: Browser) -> Page:
    """A page in a fresh context (no cookies) with the fixed viewport, the default timeout and
    its log (`log_of`)."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.add_init_script(_CSP_RECORDER)
    page = context.new_page()
    page.set_default_timeout(DEFAULT_TIMEOUT_MS)
    log = PageLog()

    def on_console(message: ConsoleMessage) -> None:
        log.console.append((message.type, message.text))

    def on_request(request: Request) -> None:
        log.requests.append(request.url)

    def on_response(response: Response) -> None:
        if response.status >= 400:
            log.failed.append((response.status, response.url))

    page.on("console", on_console)
    page.on("pageerror", lambda error: log.errors.append(str(error)))
    page.on("request", on_request)
    page.on("response", on_response)
    _LOGS[id(page)] = log
    return page


@pytest.fixture(name="page")
def page_fixture(browser: Browser) -> Iterator[Page]:
    """A fresh page of its own context, closed after the test."""
    opened = new_page(browser)
    yield opened
    _LOGS.pop(id(opened), None)
    opened.context.close()


def screenshot(page: Page, name: str) -> Path | None:
    """docs/screenshots/NAME.png of the viewport when TRIAGE_SCREENSHOTS=1, else nothing."""
    if os.environ.get("TRIAGE_SCREENSHOTS") != "1":
        return None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.set_viewport_size(VIEWPORT)  # type: ignore[arg-type]
    page.screenshot(path=str(path), full_page=False, animations="disabled")
    return path


def focused(page: Page) -> str:
    """A short description of the focused element: tag, name or text."""
    described: str = page.evaluate(
        """() => {
          const e = document.activeElement;
          if (!e) return "";
          return e.tagName.toLowerCase() + ":" + (e.getAttribute("name") || e.textContent.trim());
        }"""
    )
    return described


def tab_to(page: Page, selector: str, max_presses: int = 30) -> None:
    """Press Tab until the element matching `selector` has the focus (fails after max_presses):
    how a keyboard-only user reaches a control."""
    target = page.locator(selector)
    for _ in range(max_presses):
        if target.evaluate("e => e === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} not reached with {max_presses} Tab presses")


def log_in(page: Page, url: str, name: str, password: str = PASSWORD) -> None:
    """Log in through the form at `url`/login (mouse-free but not keyboard-only)."""
    page.goto(f"{url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on (a tiny race with other programs is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """A TOML settings file of flat sections (strings, numbers, booleans, lists)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def console_sections(tmp_path: Path, **extra: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings of a console over a store in `tmp_path`: the repository's templates copied
    there (a page that saves templates writes the copy), placeholder mailbox logins (the console
    never connects to a mail server), the same values as tests.test_leads.make_settings."""
    templates = tmp_path / "templates"
    if not templates.exists():
        shutil.copytree(ROOT / "templates", templates)
    sections: dict[str, dict[str, Any]] = {
        "imap": {"username": "x", "password": "x"},
        "smtp": {"username": "x", "password": "x"},
        "store": {"path": str(tmp_path / "triage.db")},
        "replies": {
            "templates_dir": str(templates),
            "from_address": "hello@example.test",
            "company_name": "Example Ltd",
        },
        "digest": {
            "recipients": ["sales@example.test"],
            "timezone": "Europe/Berlin",
            "from_address": "triage@example.test",
        },
    }
    for name, values in extra.items():
        sections[name] = {**sections.get(name, {}), **values}
    return sections


@dataclass
class WebServer:
    """A running `triage web`: where it listens and where its stderr goes."""

    url: str
    config: Path
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def start_web(config: Path, *, port: int | None = None) -> Iterator[WebServer]:
    """`triage --config CONFIG web` as a real process on 127.0.0.1, until /login answers; stopped
    (SIGTERM, then SIGKILL) when the block ends. Its stderr is shown when it fails to start."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    stderr_path = config.with_name(f"web-{port}.stderr")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "web",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=config.parent,
        )  # fmt: skip
    server = WebServer(url, config, process, stderr_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(f"{url}/login"):
            if process.poll() is not None:
                pytest.fail(f"triage web exited with {process.returncode}:\n{server.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"triage web did not answer in {START_TIMEOUT_S:.0f} s:\n{server.stderr()}"
                )
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class ConsoleServer:
    """`triage web` over a test store: its address, the store (filled as the pipeline would),
    the same settings the server read, and the server process."""

    url: str
    store: Store
    settings: Settings
    server: WebServer


def add_users(settings: Settings) -> None:
    """Users sam (sales) and ada (admin), both with PASSWORD."""
    store = Store(settings)
    try:
        accounts.add(store.db, "sam", "sales", PASSWORD, email="sam@example.test")
        accounts.add(store.db, "ada", "admin", PASSWORD, email="ada@example.test")
    finally:
        store.close()


@pytest.fixture(name="web_server")
def web_server_fixture(tmp_path: Path) -> Iterator[ConsoleServer]:
    """`triage web` as a real process over a new store with users sam and ada."""
    sections = console_sections(tmp_path)
    settings = make_settings(tmp_path, replies=sections["replies"])
    add_users(settings)
    config = write_config(tmp_path / "triage.toml", sections)
    store = Store(settings)
    try:
        with start_web(config) as server:
            yield ConsoleServer(server.url, store, settings, server)
            # Captured by pytest and shown only when the test failed.
            print(f"--- triage web stderr ---\n{server.stderr()}", file=sys.stderr)
            if server.process.poll() is not None:
                pytest.fail(f"triage web died during the test:\n{server.stderr()}")
    finally:
        store.close()
