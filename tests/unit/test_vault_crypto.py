"""AEAD with bound associated data: any tampering is refused, never a wrong plaintext."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grace.vault import crypto
from grace.vault.masterkey import MasterKey

PLAINTEXTS = st.binary(min_size=0, max_size=512)


def _key(name: str = "kek_a") -> crypto.Key:
    return crypto.new_key(name)


@settings(max_examples=300, deadline=None)
@given(plaintext=PLAINTEXTS, data=st.data())
def test_flipping_any_byte_is_refused(plaintext: bytes, data: st.DataObject) -> None:
    key = _key()
    binding = crypto.Binding("value", "sec_1", 1, key.id)
    sealed = crypto.seal(key, plaintext, binding)
    index = data.draw(st.integers(0, len(sealed) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(sealed)
    tampered[index] ^= flip
    with pytest.raises(crypto.IntegrityFailure):
        crypto.open_sealed(key, bytes(tampered), binding)
    assert crypto.open_sealed(key, sealed, binding) == plaintext


@settings(max_examples=200, deadline=None)
@given(plaintext=PLAINTEXTS, cut=st.integers(1, 64))
def test_truncated_or_extended_blobs_are_refused(plaintext: bytes, cut: int) -> None:
    key = _key()
    binding = crypto.Binding("value", "sec_1", 1, key.id)
    sealed = crypto.seal(key, plaintext, binding)
    with pytest.raises(crypto.IntegrityFailure):
        crypto.open_sealed(key, sealed[:-cut], binding)
    with pytest.raises(crypto.IntegrityFailure):
        crypto.open_sealed(key, sealed + b"\x00" * cut, binding)


@settings(max_examples=200, deadline=None)
@given(
    plaintext=PLAINTEXTS,
    subject=st.text(min_size=1, max_size=20),
    other_subject=st.text(min_size=1, max_size=20),
    version=st.integers(1, 10_000),
    other_version=st.integers(1, 10_000),
)
def test_swapping_between_secrets_or_versions_is_refused(
    plaintext: bytes, subject: str, other_subject: str, version: int, other_version: int
) -> None:
    key = _key()
    sealed = crypto.seal(key, plaintext, crypto.Binding("value", subject, version, key.id))
    for subject_b, version_b in ((other_subject, version), (subject, other_version)):
        if (subject_b, version_b) == (subject, version):
            continue
        with pytest.raises(crypto.IntegrityFailure):
            crypto.open_sealed(key, sealed, crypto.Binding("value", subject_b, version_b, key.id))


@settings(max_examples=100, deadline=None)
@given(plaintext=PLAINTEXTS)
def test_relabelled_key_or_purpose_is_refused(plaintext: bytes) -> None:
    key_a, key_b = _key("kek_a"), _key("kek_b")
    sealed = crypto.seal(key_a, plaintext, crypto.Binding("dek", "sec_1", 1, key_a.id))
    # Another key that claims to be the sealing key, another key under its own name, another purpose.
    impostor = crypto.Key(key_a.id, key_b.material)
    with pytest.raises(crypto.IntegrityFailure):
        crypto.open_sealed(impostor, sealed, crypto.Binding("dek", "sec_1", 1, key_a.id))
    with pytest.raises(crypto.IntegrityFailure):
        crypto.open_sealed(key_b, sealed, crypto.Binding("dek", "sec_1", 1, key_b.id))
    with pytest.raises(crypto.IntegrityFailure):
        crypto.open_sealed(key_a, sealed, crypto.Binding("value", "sec_1", 1, key_a.id))
    with pytest.raises(crypto.IntegrityFailure):
        crypto.open_sealed(key_a, sealed, crypto.Binding("dek", "sec_1", 1, key_b.id))


def test_bindings_encode_unambiguously() -> None:
    a = crypto.Binding("value", "ab", 1, "c").encode()
    b = crypto.Binding("value", "a", 1, "bc").encode()
    assert a != b
    with pytest.raises(ValueError, match="unknown purpose"):
        crypto.Binding("other", "x", 1, "k").encode()


def test_the_same_plaintext_seals_differently_each_time() -> None:
    key = _key()
    binding = crypto.Binding("value", "s", 1, key.id)
    assert crypto.seal(key, b"same", binding) != crypto.seal(key, b"same", binding)


def test_keys_never_show_their_bytes() -> None:
    key = _key()
    assert key.material.hex() not in repr(key) and "hidden" in repr(key)
    master = MasterKey(b"\x01" * 32, "test")
    assert "01010101" not in repr(master) and "hidden" in repr(master)
