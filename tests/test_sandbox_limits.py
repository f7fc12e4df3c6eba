"""A job cannot make its worker compile for ever, nor fill its log (issue 19, findings 11 and 12)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from he_compute.errors import EvaluationError, UnsafeArtifactError
from he_compute.schemes.tfhe import _mlir_walk
from he_compute.schemes.tfhe.mlir_check import check_circuit
from he_compute.worker.sandbox import Limits, _Child

T = "tensor<1x!FHE.eint<4>>"


def _chain(n: int) -> bytes:
    """A circuit of ``n`` allowed ``add_eint_int`` ops in a chain: compile time grows faster than n."""
    lines = [f"func.func @main(%x0: {T}) -> {T} {{", "  %c = arith.constant dense<1> : tensor<1xi5>"]
    lines += [f"  %x{i + 1} = \"FHELinalg.add_eint_int\"(%x{i}, %c) : ({T}, tensor<1xi5>) -> {T}" for i in range(n)]
    lines += [f"  return %x{n} : {T}", "}"]
    return "\n".join(lines).encode()


def test_a_chain_of_too_many_allowed_ops_is_refused_before_compilation():
    start = time.monotonic()
    with pytest.raises(UnsafeArtifactError, match=f"more than {_mlir_walk.MAX_OPERATIONS} operations"):
        check_circuit(_chain(_mlir_walk.MAX_OPERATIONS), "main")  # + the constant and the return
    assert time.monotonic() - start < 30  # refused by the walk, not after a compilation


def test_control_a_short_chain_passes_the_walk():
    check_circuit(_chain(20), "main")


def test_compilation_past_its_cpu_budget_kills_only_the_child(compiled, cancer, tmp_path):
    """Opening a model is bounded by HEC_SANDBOX_COMPILE_CPU_S: 1 s here, below what the tree needs."""
    from he_compute.worker.sandbox import Sandbox
    from bench.bench_sandbox import _task_and_fetch

    c = compiled("tree")
    enc = c.client.encrypt(cancer[1][:1])
    task, fetch, payloads = _task_and_fetch(c.bundle, c.client, enc)
    tight, normal = Sandbox(Limits(compile_cpu_s=1)), Sandbox(Limits())
    try:
        with pytest.raises(EvaluationError, match="SIGXCPU"):
            tight.load(task, fetch, deadline=time.monotonic() + 300)
        normal.load(task, fetch, deadline=time.monotonic() + 300)  # control: the default budget opens it
        assert normal.evaluate(payloads[0])
    finally:
        tight.close()
        normal.close()


class _Flood(_Child):
    module = "sandbox_probe"


def test_a_child_that_writes_without_end_leaves_a_bounded_log(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        child = _Flood(Limits(memory=4 << 30, env=env, warm=(), log_bytes=64 << 10), log,
                       extra={"probe_control": False})
        try:
            child.ready()
            child.log.new_job()
            flood = b"import os\nwhile True:\n    os.write(2, b'Premature EOF\\x1b]0;owned\\x07\\r\\n' * 4096)\n"
            with pytest.raises(EvaluationError, match="time limit"):
                child.call({"op": "run"}, flood, deadline=time.monotonic() + 3)
            assert child.log.dropped > 10 * child.log.budget  # it wrote far more than it was allowed
        finally:
            child.close()
            child.log.join(10)
    text = log_path.read_bytes()
    assert len(text) < (64 << 10) + 300, len(text)
    assert b"Premature EOF" in text and b"wrote more than 65536 bytes to its log for this job" in text
    assert b"\x1b" not in text and b"\r" not in text and b"\x07" not in text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
