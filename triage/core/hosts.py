"""Host names in settings: which ones stay on this machine.

Used where a setting is safe only on loopback (plain IMAP/SMTP, the unauthenticated health
endpoint). Names are never resolved: `127.attacker.example` may point anywhere.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path


def is_loopback(host: str) -> bool:
    """True for the name `localhost` and for loopback IP addresses (127.0.0.0/8, ::1) only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(ca_file: Path | str | None, verify: bool) -> ssl.SSLContext:
    """A client TLS context (IMAP and SMTP alike): certificates verified against the system store
    or `ca_file`, unless the operator explicitly switched verification off."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
