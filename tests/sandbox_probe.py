"""Test helper: a sandbox child that runs attacker code after the real lock-down.

Started by ``tests/test_sandbox_escape.py`` through :class:`he_compute.worker.sandbox._Child` (the same
environment, temp dir, pipes and settings as a worker's evaluation child) but as this module.  Unless the
settings carry ``"probe_control": true`` (the positive control), it applies
:func:`he_compute.worker.child.lock_down` exactly as the real child does, answers the hello, then runs the
Python source of each ``{"op": "run"}`` frame and replies with the ``report`` dict that source fills in.
"""

from __future__ import annotations

import json
import sys
import traceback

from he_compute.worker.child import after_model_opened, lock_down
from he_compute.worker.frames import ChildGone, read_frame, write_frame


def main(argv: list[str]) -> int:
    fd_in, fd_out, limits = int(argv[0]), int(argv[1]), json.loads(argv[2])
    applied, missing = ([], []) if limits.get("probe_control") else lock_down(limits)
    if not limits.get("probe_control"):  # as a real child is once its model is compiled
        applied += after_model_opened()
    write_frame(fd_out, {"hello": applied, "missing": missing})
    while True:
        try:
            header, payload = read_frame(fd_in, max_payload=1 << 20)
        except ChildGone:
            return 0
        if header.get("op") != "run":
            return 0
        report: dict[str, str] = {}
        try:
            exec(payload.decode(), {"report": report, "args": header.get("args", {})})  # noqa: S102 - the attack
        except BaseException:  # noqa: BLE001 - report the attacker code's own failure too
            report["_crash"] = traceback.format_exc()[-300:]
        write_frame(fd_out, {"report": report})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
