"""The suppression list's hashing, with known answers."""

from __future__ import annotations

from .suppression import LOCAL_KEY, SuppressedUsers, hashes_of, user_hash


def test_user_hash_is_hmac_sha256_in_hex():
    # RFC 4231, test case 2.
    assert user_hash("Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert user_hash(LOCAL_KEY, "u1") != user_hash("another-erasure-hash-key", "u1")
    assert "u1" not in user_hash(LOCAL_KEY, "u1")


def test_rows_from_before_the_hashing_are_hashed_on_read():
    rows = [(user_hash("k" * 16, "new"), None), (None, "old")]
    assert hashes_of("k" * 16, rows) == {user_hash("k" * 16, "new"), user_hash("k" * 16, "old")}


def test_membership_is_by_hash_under_the_same_key():
    listed = SuppressedUsers("k" * 16, {user_hash("k" * 16, "gone")})
    assert "gone" in listed and "kept" not in listed
    assert "gone" not in SuppressedUsers("x" * 16, listed.hashes)
    assert listed.among(["kept", "gone", "gone"]) == {"gone"}
    assert "kept" in listed.with_user("kept") and "kept" not in listed
    assert "k" * 16 not in repr(listed)
