"""The client's own state (signing key, audit checkpoints, config): kept per log and tenant, under $HEC_HOME,
and consistent after a crash at any point of an audit append."""

from __future__ import annotations

import os
import subprocess
import sys

from coordinator_support import CoordinatorProc

PYTHON = sys.executable


def _hec(env, *args):
    return subprocess.run([PYTHON, "-m", "he_compute", *args], env=env, capture_output=True, text=True, timeout=300)


def test_two_tenants_of_one_user_keep_apart_checkpoints_under_hec_home(tmp_path, tls, monkeypatch):  # noqa: F811
    """User action: one person holds two tenants at one coordinator (say, two projects) and runs as each in
    turn.  Each run signs and keeps a checkpoint of that tenant's log; ``hec audit verify`` as either tenant
    must then pass.  The old code keyed kept checkpoints by the coordinator's URL alone, so the second tenant's
    log was checked against the first one's checkpoint and reported as rewritten; and it kept them in
    ``~/.hec`` (or ./.hec), ignoring ``$HEC_HOME``."""
    from he_compute.client import checkpoints
    from he_compute.transport.audit import AuditLog
    from he_compute.transport.locations import Locations
    from he_compute.transport.remote import open_tenant

    home, user = tmp_path / "hec-home", tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv("HEC_HOME", str(home))
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.chdir(user)
    for name in ("HEC_CHECKPOINTS", "HEC_CONFIG", "HEC_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    coord = CoordinatorProc(tmp_path / "data", tls).start()
    try:
        second = tmp_path / "second.token"
        made = _hec(dict(os.environ), "coordinator", "add-tenant", "second", "--data", str(coord.data), "-o", str(second))
        assert made.returncode == 0, made.stderr
        tokens = {"default": coord.data / "client.token", "second": second}
        for turn, name in enumerate(["default", "second", "default", "second"]):
            # What a run does at its end: entries appended to the tenant's log, then a signed checkpoint kept.
            q, _ = open_tenant(coord.url, token_file=str(tokens[name]), ca_file=str(coord.tls[0]))
            with q, AuditLog(q.audit_store()) as log:
                for k in range(turn + 1):
                    log.append("submit", f"{name}-{turn}-{k}", {"model": "m"})
                checkpoints.checkpoint(log, Locations.resolve(coord.url).state)
            env = {**os.environ, "HEC_COORDINATOR": coord.url, "HEC_TOKEN_FILE": str(tokens[name]),
                   "HEC_CA_FILE": str(coord.tls[0])}
            out = _hec(env, "audit", "verify")
            assert out.returncode == 0, f"turn {turn} ({name}): {out.stderr}"
            assert "matches the checkpoint" in out.stderr and "entries intact" in out.stdout
    finally:
        coord.stop()
    # Everything the client keeps is under $HEC_HOME, nothing in ~/.hec or the working directory.
    assert {p.name for p in home.iterdir()} >= {"client.key", "audit-checkpoints.jsonl", "audit-checkpoints.json"}
    assert not list(user.rglob("*")), list(user.rglob("*"))


# A process that appends audit entries and dies (os._exit: no cleanup, as on SIGKILL or power loss) at the
# moment the head record would be written after the entries were made durable.
_CRASH_AFTER_FSYNC = """
import os, sys
from pathlib import Path
import he_compute.transport.audit as audit
log_path = Path(sys.argv[1])
real = audit.atomic_write
def crashing(path, data, *args, **kwargs):
    if Path(path).name == log_path.name + ".head" and log_path.exists() and log_path.stat().st_size > 0:
        os._exit(9)
    return real(path, data, *args, **kwargs)
audit.atomic_write = crashing
with audit.AuditLog.open(log_path) as log:
    log.append("submit", "job-1", {"model": "m"})
"""


def test_a_crash_between_the_first_appends_fsync_and_its_head_write_is_not_reported_as_tampering(tmp_path):
    """User action: the client dies (power cut, SIGKILL) while its first run writes the first audit entry,
    after the entry is durable and before the head record is.  ``hec audit verify`` then reported the log as
    tampered with ("head record is missing"), though nothing but a crash had happened.  Deleting the head
    of a log that has one must still be reported."""
    log = tmp_path / "audit.jsonl"
    crashed = subprocess.run([PYTHON, "-c", _CRASH_AFTER_FSYNC, str(log)], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 9, crashed.stderr  # it did die at that point
    assert log.read_text().count("\n") == 1  # with the entry durable
    out = _hec(dict(os.environ), "audit", "verify", "--log", str(log))
    assert out.returncode == 0 and "1 entries intact" in out.stdout, out.stderr
    # The log goes on from there, and the next append brings the head up to date.
    from he_compute.transport.audit import AuditLog

    with AuditLog.open(log) as again:
        again.append("submit", "job-2", {"model": "m"})
    assert _hec(dict(os.environ), "audit", "verify", "--log", str(log)).returncode == 0
    # Control: a head deleted by someone (not a crash) is still found.
    (tmp_path / "audit.jsonl.head").unlink()
    tampered = _hec(dict(os.environ), "audit", "verify", "--log", str(log))
    assert tampered.returncode == 1 and "head record is missing" in tampered.stderr, tampered.stderr
