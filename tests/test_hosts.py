"""Which hosts count as loopback: IP addresses and the name `localhost`, never look-alike names."""

from __future__ import annotations

import pytest

from triage.core.hosts import is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost", "LOCALHOST"])
def test_loopback_addresses_and_localhost(host: str) -> None:
    """127.0.0.0/8, ::1 and the name `localhost`."""
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "127.attacker.example",
        "127.0.0.1.nip.io",
        "::1.example",
        "localhost.example",
        "10.0.0.1",
        "0.0.0.0",  # noqa: S104 - a value under test, nothing is bound
        "",
        "::",
    ],
)
def test_names_that_only_look_like_loopback_and_other_addresses(host: str) -> None:
    """A name is not resolved, so no name but `localhost` is loopback; nor is any other IP."""
    assert not is_loopback(host)
