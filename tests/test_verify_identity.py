"""Worker identities: created once with private permissions, loaded back, pinned by an allow-list."""

from __future__ import annotations

import os
import stat

import pytest

from he_compute.errors import HECError
from he_compute.client.run import AllowList
from he_compute.errors import IdentityError, UntrustedWorker
from he_compute.formats.signing import fingerprint
from he_compute.worker.identity import WorkerIdentity
from he_compute.formats.signing import parse_public_key
from he_compute.worker.identity import PRIVATE_FILE, PUBLIC_FILE


def test_created_on_first_start_with_private_modes_and_reloaded(tmp_path):
    state = tmp_path / "state"
    me = WorkerIdentity.load_or_create(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / PRIVATE_FILE).stat().st_mode) == 0o600
    assert (state / PRIVATE_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = WorkerIdentity.load_or_create(state)
    assert again.worker_id == me.worker_id == fingerprint(me.public_raw)
    assert len(me.worker_id) == 64 and me.short_id == me.worker_id[:16]
    assert parse_public_key((state / PUBLIC_FILE).read_text()) == me.public_raw
    assert me.short_id in repr(me) and "PRIVATE" not in repr(me)


def test_refuses_a_key_file_others_can_read(tmp_path):
    WorkerIdentity.load_or_create(tmp_path / "s")
    os.chmod(tmp_path / "s" / PRIVATE_FILE, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        WorkerIdentity.load_or_create(tmp_path / "s")


def test_refuses_a_garbage_key_file(tmp_path):
    (tmp_path / PRIVATE_FILE).write_bytes(b"not a key")
    os.chmod(tmp_path / PRIVATE_FILE, 0o600)
    with pytest.raises(IdentityError, match="not a PEM"):
        WorkerIdentity.load(tmp_path)


def test_allow_list_round_trip_and_check(tmp_path):
    a, b, c = WorkerIdentity.generate(), WorkerIdentity.generate(), WorkerIdentity.generate()
    allowed = AllowList([a.public_raw])
    allowed.add(b.public_line("second worker"))
    allowed.save(tmp_path / "workers.allow")
    text = (tmp_path / "workers.allow").read_text()
    (tmp_path / "workers.allow").write_text("# my workers\n\n" + text)
    loaded = AllowList.from_file(tmp_path / "workers.allow")
    assert loaded.worker_ids == sorted([a.worker_id, b.worker_id]) and len(loaded) == 2
    assert loaded.check(a.public_raw) == a.worker_id and b.worker_id in loaded
    with pytest.raises(UntrustedWorker, match=f"worker {c.short_id} is not on the allow-list") as info:
        loaded.check(c.public_raw)
    assert isinstance(info.value, HECError) and info.value.worker == c.short_id


@pytest.mark.parametrize("line", ["ed25519 AAAA", "ssh-rsa AAAAB3NzaC1yc2E=", "ed25519 !!!", "ed25519"])
def test_allow_list_rejects_bad_lines_with_the_line_number(tmp_path, line):
    (tmp_path / "a").write_text(WorkerIdentity.generate().public_line() + "\n" + line + "\n")
    with pytest.raises(IdentityError, match="line 2"):
        AllowList.from_file(tmp_path / "a")
