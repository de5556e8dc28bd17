"""Host names in settings: which ones stay on this machine.

Used where a setting is safe only on loopback (plain IMAP/SMTP, the unauthenticated health
endpoint). Names are never resolved: `127.attacker.example` may point anywhere.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for the name `localhost` and for loopback IP addresses (127.0.0.0/8, ::1) only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
