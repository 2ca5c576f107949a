"""Property tests (hypothesis) for the field recipe and blind indexes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.blindindex import blind_index
from security.fieldcrypt import FieldDecryptionError, new_key, open_sealed, seal

KEY = new_key()
PLACE = {"table": "contacts", "column": "email", "row_id": "01900000-0000-7000-8000-000000000000"}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500))
def test_any_text_round_trips(plaintext: str) -> None:
    blob = seal(KEY, key_version=3, plaintext=plaintext, **PLACE)
    assert open_sealed(lambda v: KEY if v == 3 else None, blob=blob, **PLACE) == plaintext


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=50), st.data())
def test_any_flipped_bit_is_refused(plaintext: str, data: st.DataObject) -> None:
    blob = bytearray(seal(KEY, key_version=1, plaintext=plaintext, **PLACE))
    position = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    blob[position] ^= 1 << bit
    with pytest.raises(FieldDecryptionError):
        open_sealed(lambda v: KEY, blob=bytes(blob), **PLACE)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,20}\.[a-z]{2,6}", fullmatch=True),
       st.sampled_from(["", " ", "\t"]))
def test_email_index_ignores_case_and_surrounding_space(email: str, pad: str) -> None:
    key = b"k" * 32
    assert blind_index(key, "email", pad + email.upper() + pad) == blind_index(key, "email", email)
    assert blind_index(key, "email", email) != blind_index(b"j" * 32, "email", email)
