"""FETCH responses of the usual shape are read by the fast path; every other shape gives what
imapclient's own parser gives, so the fast path never changes a result.

The inputs are imaplib's untagged FETCH data, as `IMAP4.uid("FETCH", …)` returns it: a literal
comes as a (line, bytes) pair followed by the rest of its line (`b")"`).
"""

from __future__ import annotations

from typing import Any

from triage.ingest.mailbox import FETCH_BODY, _fast_bodies, _fast_sizes, _parsed


def bodies(data: list[Any], uids: list[int]) -> dict[int, bytes]:
    """What `ImapMailbox.fetch` returns for `data`."""
    fast = _fast_bodies(data, uids)
    if fast is not None:
        return fast
    return {uid: bytes(v.get(FETCH_BODY, b"")) for uid, v in _parsed(data, uids).items()}


def test_the_usual_shape_is_read_fast_and_as_imapclient_reads_it() -> None:
    """Dovecot's `* N FETCH (UID u BODY[] {n}` + literal + `)`: fast, and the same dict."""
    data = [(b"1 (UID 7 BODY[] {5}", b"Hello"), b")", (b"2 (UID 9 BODY[] {3}", b"a\r\n"), b")"]
    assert _fast_bodies(data, [7, 9]) == {7: b"Hello", 9: b"a\r\n"}
    slow = _parsed(data, [7, 9])
    assert {uid: v[FETCH_BODY] for uid, v in slow.items()} == {7: b"Hello", 9: b"a\r\n"}


def test_other_shapes_fall_back_to_the_full_parser() -> None:
    """UID after the literal, FLAGS beside it, an unsolicited FETCH, a literal shorter than
    announced: the fast path declines, and imapclient's parser gives the answer."""
    uid_after = [(b"1 (BODY[] {5}", b"Hello"), b" UID 7)"]
    flags = [(b"1 (UID 7 FLAGS (\\Seen) BODY[] {5}", b"Hello"), b")"]
    unsolicited = [(b"1 (UID 7 BODY[] {5}", b"Hello"), b")", b"3 (FLAGS (\\Deleted))"]
    for data in (uid_after, flags, unsolicited):
        assert _fast_bodies(data, [7]) is None
        assert bodies(data, [7]) == {7: b"Hello"}
    short = [(b"1 (UID 7 BODY[] {9}", b"Hello"), b")"]
    assert _fast_bodies(short, [7]) is None


def test_a_message_not_asked_for_is_never_returned() -> None:
    """A response for a UID we did not ask about (a misbehaving server) is dropped."""
    data = [(b"1 (UID 7 BODY[] {5}", b"Hello"), b")", (b"2 (UID 8 BODY[] {2}", b"Hi"), b")"]
    assert _fast_bodies(data, [7]) is None
    assert bodies(data, [7]) == {7: b"Hello"}


def test_no_response_at_all_is_an_empty_result() -> None:
    """Every UID gone: imaplib gives [None], and the answer is empty."""
    assert bodies([None], [7]) == {}
    assert _fast_sizes([None], [7]) is None
    assert _parsed([None], [7]) == {}


def test_sizes_of_the_usual_shape_and_otherwise() -> None:
    """`* N FETCH (UID u RFC822.SIZE s)` is read fast; another order goes to the parser."""
    data = [b"1 (UID 7 RFC822.SIZE 1200)", b"2 (UID 9 RFC822.SIZE 30)"]
    assert _fast_sizes(data, [7, 9]) == {7: 1200, 9: 30}
    other = [b"1 (RFC822.SIZE 1200 UID 7)"]
    assert _fast_sizes(other, [7]) is None
    assert _parsed(other, [7])[7][b"RFC822.SIZE"] == 1200


def test_an_unsolicited_fetch_without_uid_is_not_taken_for_a_uid() -> None:
    """`* 7 FETCH (FLAGS (\\Seen))` (another client changed flags of message number 7) carries
    no UID: it says nothing of UID 7, which may be gone. No empty body, no size for it."""
    flags_only = [b"7 (FLAGS (\\Seen))"]
    assert bodies(flags_only, [7]) == {}
    assert _parsed(flags_only, [7]) == {}
    mixed = [(b"1 (UID 9 BODY[] {2}", b"Hi"), b")", b"7 (FLAGS (\\Seen))"]
    assert bodies(mixed, [7, 9]) == {9: b"Hi"}
