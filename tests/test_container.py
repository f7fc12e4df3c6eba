"""The container format: round trips, and every kind of damage is caught with a clear error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from he_compute.formats import container
from he_compute.formats.container import Container
from he_compute.errors import FormatError, IntegrityError

names = st.text(alphabet="abcdefghij/._", min_size=1, max_size=12)


@settings(max_examples=50, deadline=None)
@given(sections=st.dictionaries(names, st.binary(max_size=256), max_size=5),
       meta=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4))
def test_round_trip(sections, meta):
    c = Container("ciphertexts", "tfhe", meta, sections)
    back = container.parse(c.to_bytes())
    assert (back.kind, back.scheme, back.meta, back.sections) == ("ciphertexts", "tfhe", meta, sections)


def _sample() -> bytes:
    return Container("evalkeys", "tfhe", {"k": 1}, {"keys": b"x" * 100, "more": b"y" * 10}).to_bytes()


@pytest.mark.parametrize("position", [0, 12, 40, -50, -1])
def test_any_flipped_byte_is_detected(position):
    data = bytearray(_sample())
    data[position] ^= 0x01
    with pytest.raises(FormatError):
        container.parse(bytes(data))


def test_truncation_is_detected():
    with pytest.raises(IntegrityError, match="corrupt or truncated"):
        container.parse(_sample()[:-10])


def test_wrong_kind_is_named():
    with pytest.raises(FormatError, match="is a evalkeys file, expected bundle"):
        container.parse(_sample(), expect="bundle")


def test_not_a_container():
    with pytest.raises(FormatError, match="not a he_compute file"):
        container.parse(b"PK\x03\x04 a zip file, not ours" * 4)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    container.atomic_write(tmp_path / "f.bin", b"abc", 0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o600
