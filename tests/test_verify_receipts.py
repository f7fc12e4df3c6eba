"""Signed receipts: a valid one verifies; any edit, a wrong key, a wrong job or an unknown signer is refused."""

from __future__ import annotations

import base64
import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from he_compute.client.run import AllowList
from he_compute.errors import FormatError, ReceiptError, UntrustedWorker, VerificationError
from he_compute.formats.canonical import canonical
from he_compute.formats.receipt import sign_receipt, verify_receipt
from he_compute.worker.identity import WorkerIdentity

D_IN, D_OUT, D_OTHER = ("sha256:" + c * 64 for c in "abc")
ME = WorkerIdentity.generate()


def _receipt(identity=ME, **over):
    fields = dict(job_id="job-1", model_id="m" * 64, key_id="k" * 64, inputs=[D_IN], outputs=[D_OUT],
                  timings={"started_ms": 1_700_000_000_000, "eval_ms": 12})
    fields.update(over)
    return sign_receipt(identity, **fields)


def test_a_valid_receipt_verifies_and_is_returned_parsed():
    r = verify_receipt(_receipt(), expected={"job_id": "job-1", "inputs": (D_IN,), "outputs": [D_OUT],
                                             "model_id": "m" * 64, "key_id": "k" * 64, "worker_id": ME.worker_id},
                       allowed=AllowList([ME.public_raw]))
    assert (r.job_id, r.inputs, r.outputs, r.worker_id) == ("job-1", (D_IN,), (D_OUT,), ME.worker_id)
    assert r.timings == {"started_ms": 1_700_000_000_000, "eval_ms": 12} and r.raw["v"] == 1


@pytest.mark.parametrize("field,value", [("job", "job-2"), ("model_id", "x" * 64), ("key_id", "y" * 64),
                                         ("inputs", [D_OTHER]), ("outputs", [D_OTHER]),
                                         ("timings", {"started_ms": 0, "eval_ms": 1})])
def test_an_edited_field_breaks_the_signature(field, value):
    r = _receipt()
    r[field] = value
    with pytest.raises(ReceiptError, match=f"bad signature from worker {ME.short_id}"):
        verify_receipt(r)


def test_signed_with_the_wrong_key_is_refused():
    thief = WorkerIdentity.generate()
    r = _receipt()
    claimed = copy.deepcopy(r)
    claimed["sig"] = _receipt(thief)["sig"]  # signed by another key, claiming to be ME
    with pytest.raises(ReceiptError, match="bad signature"):
        verify_receipt(claimed)
    swapped = _receipt(thief)
    swapped["worker"] = ME.worker_id  # names ME but carries the thief's key
    with pytest.raises(ReceiptError, match="another worker's public key"):
        verify_receipt(swapped)


def test_a_receipt_for_another_job_or_other_outputs_is_refused():
    with pytest.raises(ReceiptError, match="job_id"):
        verify_receipt(_receipt(), expected={"job_id": "job-9"})
    with pytest.raises(ReceiptError, match="outputs"):
        verify_receipt(_receipt(), expected={"outputs": [D_OTHER]})


def test_an_unknown_signer_is_refused_by_the_allow_list():
    with pytest.raises(UntrustedWorker, match=ME.short_id):
        verify_receipt(_receipt(), allowed=AllowList([WorkerIdentity.generate().public_raw]))


@pytest.mark.parametrize("mangle", [
    lambda r: r.pop("sig"), lambda r: r.update(v=2), lambda r: r.update(extra=1),
    lambda r: r.update(inputs="sha256:abc"), lambda r: r.update(public_key="!!"),
    lambda r: r.update(public_key=base64.b64encode(b"short").decode()), lambda r: r.update(sig="***"),
    lambda r: r.update(timings={"eval_ms": 1.5}), lambda r: r.update(job=""),
])
def test_malformed_receipts_raise_receipt_errors(mangle):
    r = _receipt()
    mangle(r)
    with pytest.raises(ReceiptError):
        verify_receipt(r)


@pytest.mark.parametrize("value", [None, "receipt", [1, 2], 42])
def test_a_missing_receipt_raises(value):
    with pytest.raises(ReceiptError):
        verify_receipt(value)


def test_verify_never_returns_a_bool_and_misuse_is_a_value_error():
    assert not isinstance(verify_receipt(_receipt()), bool)
    with pytest.raises(ValueError, match="cannot check"):
        verify_receipt(_receipt(), expected={"colour": "blue"})


def test_canonical_json_refuses_floats_and_sorts_keys():
    assert canonical({"b": 1, "a": [True, None, "é"]}) == b'{"a":[true,null,"\\u00e9"],"b":1}'
    with pytest.raises(FormatError, match="no floats"):
        canonical({"t": 0.1})


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_in_the_signed_bytes_is_caught(byte, bit):
    r = _receipt()
    sig = bytearray(base64.b64decode(r["sig"]))
    pos = byte % len(sig)
    sig[pos] ^= 1 << bit
    r["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(VerificationError):
        verify_receipt(r)
