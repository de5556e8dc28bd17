"""Host names in settings: which ones stay on this machine.

Used where a setting is safe only on loopback (plain IMAP/SMTP, the unauthenticated health
endpoint). Names are never resolved: `127.attacker.example` may point anywhere.

Also the client TLS context of IMAP and SMTP connections, one per (CA file, verification) per
process: loading the system's trust store costs about a third of a megabyte and a few
milliseconds, once per process instead of once per connection.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import threading
import time
from pathlib import Path

# A cached context is built again after this long, so that an updated system trust store is
# read by a daemon that runs for months (a replaced `ca_file` is noticed at once, by its stat).
CONTEXT_MAX_AGE = 3600.0

# (CA file and its stat, verify) -> (context, monotonic time it was built).
_CacheKey = tuple[tuple[str, int, int, int] | None, bool]
_contexts: dict[_CacheKey, tuple[ssl.SSLContext, float]] = {}
_contexts_guard = threading.Lock()


def is_loopback(host: str) -> bool:
    """True for the name `localhost` and for loopback IP addresses (127.0.0.0/8, ::1) only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(ca_file: Path | str | None, verify: bool) -> ssl.SSLContext:
    """The client TLS context (IMAP and SMTP alike) of this process for `ca_file` and `verify`:
    certificates verified against the system store or `ca_file`, unless the operator explicitly
    switched verification off.

    Shared by every connection and thread that asks with the same arguments (an SSLContext is
    safe to share; callers must not change it). A `ca_file` replaced on disk (another inode,
    size or modification time) gets a new context; so does any context older than
    `CONTEXT_MAX_AGE`. A `ca_file` that cannot be read raises as `ssl` does, and is not cached.
    """
    ca_key: tuple[str, int, int, int] | None = None
    if ca_file:
        try:
            info = os.stat(ca_file)
        except OSError:
            return new_tls_context(ca_file, verify)  # raises the error the operator should see
        ca_key = (str(ca_file), info.st_ino, info.st_size, info.st_mtime_ns)
    key: _CacheKey = (ca_key, verify)
    now = time.monotonic()
    with _contexts_guard:
        cached = _contexts.get(key)
        if cached is not None and now - cached[1] < CONTEXT_MAX_AGE:
            return cached[0]
        ctx = new_tls_context(ca_file, verify)
        if ca_key is not None:
            # Contexts of the CA file's older versions are of no more use.
            for old in [k for k in _contexts if k[1] == verify and k[0] and k[0][0] == ca_key[0]]:
                del _contexts[old]
        _contexts[key] = (ctx, now)
        return ctx


def new_tls_context(ca_file: Path | str | None, verify: bool) -> ssl.SSLContext:
    """A new client TLS context, not shared (see `tls_context`)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
