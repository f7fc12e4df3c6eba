"""Test-only faults for worker processes, kept out of the production worker loop.

Python imports ``sitecustomize`` at start-up from ``sys.path``; the tests put this directory on ``PYTHONPATH``
and name a fault in ``HE_COMPUTE_TEST_FAULT`` (``queue_support.fault_env``) for the worker processes they start
(``hec worker`` and its children inherit both; the sandbox's evaluation child gets an empty environment, so it
runs unchanged):

- ``sleep=S``: sleep S seconds before evaluating each chunk (a slow worker);
- ``exit``: kill the process (``os._exit(70)``) as soon as it has claimed a job (a crash);
- ``raise``: raise an unexpected exception there (a bug).
"""

from __future__ import annotations

import os
import time

_FAULT = os.environ.get("HE_COMPUTE_TEST_FAULT", "")

if _FAULT:
    from he_compute.worker import loop as _loop

    _execute, _init = _loop.Worker._execute, _loop.Worker.__init__

    def _faulty_execute(self, lease, hb):
        if _FAULT == "exit":
            os._exit(70)
        if _FAULT == "raise":
            raise ArithmeticError("HE_COMPUTE_TEST_FAULT=raise: simulated crash")
        return _execute(self, lease, hb)

    def _slow_init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        evaluate, pause = self.executor.evaluate, float(_FAULT.split("=", 1)[1])

        def slow(payload, deadline):
            time.sleep(pause)
            return evaluate(payload, deadline)

        self.executor.evaluate = slow

    _loop.Worker._execute = _faulty_execute
    if _FAULT.startswith("sleep="):
        _loop.Worker.__init__ = _slow_init
