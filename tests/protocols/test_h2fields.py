"""The one-pass HTTP/2 request field check on its own: a name seen before skips the
name pattern, and the memo of names never lets a bad one through or grows unbounded."""

from __future__ import annotations

from multiplex.protocols import h2fields

GOOD = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")]


def test_a_name_remembered_as_good_is_still_a_good_name_only() -> None:
    assert h2fields.request_error([*GOOD, (b"x-seen", b"1")]) is None
    assert b"x-seen" in h2fields._known_names
    # Values are checked every time, whatever the name.
    assert h2fields.request_error([*GOOD, (b"x-seen", b"a\nb")]) is not None
    assert h2fields.request_error([*GOOD, (b"X-Seen", b"1")]) is not None


def test_bad_names_are_never_remembered() -> None:
    for bad in (b"Bad", b"a b", b"x:y", b"", b"\xff"):
        assert h2fields.request_error([*GOOD, (bad, b"1")]) is not None
        assert bad not in h2fields._known_names


def test_the_memo_is_bounded() -> None:
    for n in range(h2fields._KNOWN_NAMES_MAX + 100):
        assert h2fields.request_error([*GOOD, (b"x-name-%d" % n, b"1")]) is None
    assert len(h2fields._known_names) <= h2fields._KNOWN_NAMES_MAX
