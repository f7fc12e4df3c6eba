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


def test_save_writes_what_to_bytes_gives_and_returns_the_files_sha256(tmp_path):
    import hashlib

    c = Container("ciphertexts", "ckks", {"n_samples": 3}, {"chunk/000000": b"a" * 5000, "chunk/000001": b"b" * 7})
    digest = c.save(tmp_path / "x.enc")
    data = (tmp_path / "x.enc").read_bytes()
    assert data == c.to_bytes() and digest == hashlib.sha256(data).hexdigest()


def test_known_section_digests_follow_replaced_sections(tmp_path):
    c = container.parse(_sample())
    before = c.section_digests()["keys"]
    c.sections["keys"] = b"z" * 100  # a new bytes object: the digest parse verified no longer applies
    assert c.section_digests()["keys"] != before
    assert container.parse(c.to_bytes()).sections["keys"] == b"z" * 100


def test_read_meta_reads_the_header_alone_and_names_bad_files(tmp_path):
    Container("ciphertexts", "ckks", {"key_id": "k1"}, {"chunk/000000": b"x" * 10}).save(tmp_path / "x.enc")
    assert container.read_meta(tmp_path / "x.enc", expect="ciphertexts") == {"key_id": "k1"}
    with pytest.raises(FormatError, match="is a ciphertexts file, expected results"):
        container.read_meta(tmp_path / "x.enc", expect="results")
    (tmp_path / "junk").write_bytes(b"not a container at all")
    with pytest.raises(FormatError, match="bad magic"):
        container.read_meta(tmp_path / "junk")
    with pytest.raises(FormatError, match="does not exist"):
        container.read_meta(tmp_path / "missing.enc")
