"""Client side of the CKKS scheme: key generation, encryption, decryption, post-processing.

The secret file is SEAL's serialized secret key; the evaluation keys are a
``keys`` payload (see :mod:`.payload`) holding relinearization keys and Galois
keys for exactly the rotation steps the plan needs (``manifest["ckks"]["galois_steps"]``),
both in SEAL's seeded form (half the size).  Inputs are encrypted with the secret
key (symmetric CKKS: faster than public-key encryption and half the bytes); no
public key is made, so workers hold nothing that encrypts.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import settings
from ...errors import FormatError, KeyMismatchError, UnsupportedModelError, clipped_message, warn
from ...formats.bundle import Bundle
from . import params
from .payload import Payload, check_output, pack
from .seal import Engine, dump, galois_elt, load, sealapi


@dataclass
class CKKSKeys:
    """Serialized secret context and shareable evaluation context."""

    secret: bytes
    evaluation: bytes


def _postprocess(kind: str | None, y: np.ndarray) -> np.ndarray:
    """Exact output activations, applied in the clear after decryption."""
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if kind == "sigmoid2":
        p = 1.0 / (1.0 + np.exp(-y[:, :1]))
        return np.concatenate([1.0 - p, p], axis=1)
    if kind == "softmax":
        e = np.exp(y - y.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return y


class CKKSClient:
    """Encrypts and decrypts for one bundle; holds the secret key once keys exist."""

    def __init__(self, manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None):
        self.ckks = dict(manifest["ckks"])
        params.validate(self.ckks)
        try:
            encoding = json.loads(sections["encoding.json"])
            self.n_out, self.post = int(encoding["plan_outputs"]), encoding["postprocess"]
            clip = encoding.get("input_clip")
            self.clip = None if clip is None else (np.asarray(clip[0], dtype=np.float64), np.asarray(clip[1], dtype=np.float64))
        except (KeyError, ValueError, TypeError) as exc:
            raise FormatError(f"CKKS client part lacks a valid encoding.json ({exc}): re-compile the bundle") from exc
        self.packing = self.ckks["packing"]
        self.slots = int(self.ckks["poly_modulus_degree"]) // 2
        self.block = int(self.ckks.get("block", 0))
        self.engine = Engine(self.ckks)
        self._secret: Any = None
        if secret is not None:
            self._secret = load("SecretKey", self.engine.context, secret, "the CKKS secret key")

    def keygen(self) -> CKKSKeys:
        """A fresh secret key, and relinearization / Galois keys for exactly what the plan needs."""
        s = sealapi()
        gen = s.KeyGenerator(self.engine.context)
        self._secret = gen.secret_key()
        parts, blobs = [], []
        if self.ckks.get("relin_keys", True):
            parts.append("relin")
            blobs.append(dump(gen.create_relin_keys()))
        steps = [int(x) for x in self.ckks.get("galois_steps", [])]
        if steps:
            parts.append("galois")
            blobs.append(dump(gen.create_galois_keys([galois_elt(x, self.engine.n) for x in steps])))
        evaluation = pack(Payload("keys", self.packing, 1, blobs, {"parts": parts, "galois_steps": steps}))
        return CKKSKeys(secret=dump(self._secret), evaluation=evaluation)

    def _key(self) -> Any:
        if self._secret is None:
            raise KeyMismatchError("no CKKS keys loaded: run hec keygen BUNDLE --keys DIR first")
        return self._secret

    def _encrypt(self, encryptor: Any, values: np.ndarray) -> bytes:
        return dump(encryptor.encrypt_symmetric(self.engine.encode(values, 0, self.engine.scales[0])))

    def encrypt(self, X: np.ndarray) -> list[tuple[int, bytes]]:
        """Batch: one ciphertext per feature over up to ``slots`` samples; single: ``[x, x]`` blocks."""
        enc = sealapi().Encryptor(self.engine.context, self._key())
        flat = np.asarray(X, dtype=np.float64).reshape(X.shape[0], -1)
        flat = self.clip_inputs(flat)
        chunks = []
        if self.packing == "single":
            per = self.slots // (2 * self.block)
            flat = _pad_rows(flat, per)
            for start in range(0, flat.shape[0], per):
                part = flat[start : start + per]
                vec = np.zeros(self.slots)
                for b, row in enumerate(part):
                    vec[2 * self.block * b : 2 * self.block * b + row.size] = row
                    vec[2 * self.block * b + self.block : 2 * self.block * b + self.block + row.size] = row
                chunks.append((part.shape[0], pack(Payload("input", "single", part.shape[0], [self._encrypt(enc, vec)]))))
            return chunks
        flat = _pad_rows(flat, self.slots)
        parts = [flat[start : start + self.slots] for start in range(0, flat.shape[0], self.slots)]
        if len(parts) > 1 and _may_fork():
            return _in_processes(self, parts)
        return [self._encrypt_batch(enc, part) for part in parts]

    def clip_inputs(self, flat: np.ndarray) -> np.ndarray:
        """``flat`` clipped to the calibration box, with one warning naming the cells that were outside it."""
        if self.clip is None or self.clip[0].shape != flat.shape[1:]:
            return flat
        # Polynomial activations are only accurate (and bounded) on the calibration ranges, and a slot past
        # what the modulus holds wraps and corrupts every other sample of its ciphertext when decoded: so
        # each feature is clipped to the calibration range widened by the compile margin (encoding.json in
        # the client part), and the user is told which cells were.
        outside = (flat < self.clip[0]) | (flat > self.clip[1])
        if outside.any():
            rows, cols = np.nonzero(outside)
            warn(clipped_message(
                f"{rows.size} input value(s) clipped to the calibration range widened by half its span (only "
                f"{np.unique(rows).size} row(s) affected)", rows.tolist(), cols.tolist(),
                flat[rows, cols].tolist()), stacklevel=4)
        return np.clip(flat, self.clip[0], self.clip[1])

    def _encrypt_batch(self, enc: Any, part: np.ndarray) -> tuple[int, bytes]:
        cts = [self._encrypt(enc, part[:, j]) for j in range(part.shape[1])]
        return part.shape[0], pack(Payload("input", "batch", part.shape[0], cts))

    def decrypt(self, payload: bytes, n_samples: int) -> np.ndarray:
        """Decrypt one result chunk into ``(n_samples, n_outputs)`` float64, post-processed."""
        s = sealapi()
        dec = s.Decryptor(self.engine.context, self._key())
        p = check_output(payload, self.ckks, self.n_out, n_samples)  # sizes first: SEAL parses only then
        vectors = []
        for ct in p.ciphertexts:
            pt = s.Plaintext()
            dec.decrypt(self.engine.ciphertext(ct, "result ciphertext"), pt)
            vectors.append(np.asarray(self.engine.encoder.decode_double(pt), dtype=np.float64))
        if self.packing == "single":
            if len(vectors) != 1:
                raise FormatError("single-packed result must be one ciphertext holding every output")
            y = np.stack([vectors[0][2 * self.block * b : 2 * self.block * b + self.n_out] for b in range(n_samples)])
        else:
            if len(vectors) != self.n_out or any(v.size < n_samples for v in vectors):
                raise FormatError(f"batch result must hold {self.n_out} ciphertexts of {n_samples} samples")
            y = np.stack([v[:n_samples] for v in vectors], axis=1)
        return _postprocess(self.post, y)


def _pad_rows(flat: np.ndarray, per: int) -> np.ndarray:
    """``flat`` with copies of its own rows appended up to a multiple of ``per``.

    Every chunk then holds ``per`` samples, so a short last chunk cannot tell a worker that it is real work
    and not a canary (canaries are full chunks).  Copies of real rows, not zeros, keep every slot inside
    the calibration range the polynomial activations were fitted on.  The client drops the padding when it
    decrypts (``n_samples`` in the container says how many rows are real).
    """
    missing = -flat.shape[0] % per
    return np.concatenate([flat, flat[np.arange(missing) % flat.shape[0]]]) if missing else flat


# Batch encryption of many chunks is spread over the cores by forked processes: SEAL's bindings hold the
# GIL, so threads would not help.  This process encrypts the first share of the chunks itself while one
# forked child per other core encrypts the rest into an anonymous in-memory file, read back once the child
# has exited: one fork per core and no pickling (a multiprocessing pool spent a third of the time moving
# results).  A fork copies the secret key only into processes of this same client, which write
# ciphertext bytes and exit.  It is done from the main thread only, where no other thread of ours can hold
# a lock the children would inherit.  A child that fails costs only time: its share is encrypted here.
_FRAME = struct.Struct("<QQ")  # (samples, payload bytes) before each payload a child writes


def _may_fork() -> bool:
    import threading

    return (threading.current_thread() is threading.main_thread() and (os.cpu_count() or 1) > 1
            and hasattr(os, "fork") and hasattr(os, "memfd_create")
            and settings.get("HEC_ENCRYPT_PROCESSES") != "1")


def _in_processes(client: CKKSClient, parts: list[np.ndarray]) -> list[tuple[int, bytes]]:
    n = min(len(parts), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    shares = [parts[len(parts) * i // n : len(parts) * (i + 1) // n] for i in range(n)]
    children = []
    for share in shares[1:]:
        fd = os.memfd_create("hec-encrypt", os.MFD_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child: encrypt its share into fd, then leave without running any cleanup
            code = 1
            try:
                enc = sealapi().Encryptor(client.engine.context, client._key())
                with os.fdopen(fd, "wb", closefd=False) as pipe:
                    for part in share:
                        count, payload = client._encrypt_batch(enc, part)
                        pipe.write(_FRAME.pack(count, len(payload)) + payload)
                code = 0
            finally:
                os._exit(code)
        children.append((pid, fd, share))
    enc = sealapi().Encryptor(client.engine.context, client._key())
    out = [client._encrypt_batch(enc, part) for part in shares[0]]
    for pid, fd, share in children:
        _, status = os.waitpid(pid, 0)
        got = _read_frames(fd, len(share)) if status == 0 else None
        os.close(fd)
        out.extend(got if got is not None else [client._encrypt_batch(enc, part) for part in share])
    return out


def _read_frames(fd: int, n: int) -> list[tuple[int, bytes]] | None:
    """The ``n`` (samples, payload) frames a child wrote to ``fd``, or ``None`` if they are not all there."""
    size = os.fstat(fd).st_size
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else nullcontext(b"") as data:
        pos, frames = 0, []
        for _ in range(n):
            if pos + _FRAME.size > size:
                return None
            count, length = _FRAME.unpack_from(data, pos)
            pos += _FRAME.size
            if pos + length > size:
                return None
            frames.append((int(count), bytes(data[pos : pos + length])))
            pos += length
        return frames if pos == size else None


class CKKSClientScheme:
    """The CKKS scheme as the data owner sees it (:class:`~he_compute.schemes.base.ClientScheme`)."""

    name = "ckks"

    def compile(self, model: Any, X_calib: np.ndarray, **options: Any) -> Bundle:
        """Compile a torch module, ONNX graph or scikit-learn linear model into a CKKS bundle."""
        from .compiler import compile as _compile

        return _compile(model, X_calib, **options)

    def open_client(self, manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None) -> CKKSClient:
        """Encoding, post-processing and (if given) the secret key."""
        from .boot import bootstrapping as _bootstrapping

        if _bootstrapping(manifest):
            from .boot_client import BootClient

            return BootClient(manifest, sections, secret)  # type: ignore[return-value]
        return CKKSClient(manifest, sections, secret)

    def simulate(self, manifest: dict[str, Any], client: dict[str, bytes], server: dict[str, bytes],
                 X: np.ndarray) -> np.ndarray:
        """What the encrypted run decrypts to, without keys: the plan in the clear (the same polynomials and
        folded weights) on the clipped inputs, post-processed; it differs only by CKKS noise."""
        from .plan import check_sections, run_plan

        c = self.open_client(manifest, client, None)
        c = getattr(c, "seal", c)  # the bootstrapping engine's client keeps the encoding in its .seal
        plan, weights = check_sections(server)
        flat = c.clip_inputs(np.asarray(X, dtype=np.float64).reshape(len(X), -1))
        y = run_plan(plan, weights, flat.reshape(len(X), *plan["input_shape"]))
        return _postprocess(c.post, y.reshape(len(X), -1))

    def rerandomize(self, evaluation: bytes, payload: bytes) -> bytes:
        """Not possible: inputs are encrypted symmetrically and no public key is made (workers hold nothing
        that encrypts), so only the secret key could re-encrypt."""
        raise UnsupportedModelError("CKKS ciphertexts cannot be re-randomized: no public key is made")


SCHEME = CKKSClientScheme()
