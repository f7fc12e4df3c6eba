"""CKKS on the wire: inputs travel as SEAL's seeded, zstd-compressed ciphertexts, and a compressed stream from
a stranger cannot make either side inflate more than the parameters allow.

The attacks: a worker returns a result ciphertext, and a client sends an input ciphertext, whose zstd stream
holds a valid ciphertext followed by 2 GiB of zeros (a few kilobytes on the wire, inside every frame-size
check). Each is read in a child process whose address space is capped 600 MiB above what it already uses;
inflating the whole stream would die there. SEAL inflates as it reads the ciphertext's members, whose sizes it
checks against the parameters first, and stops.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import he_compute
from he_compute.formats.container import Container

pytest.importorskip("tenseal")
zstandard = pytest.importorskip("zstandard")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckks(tmp_path_factory):
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    bundle = he_compute.compile(LogisticRegression(max_iter=1000).fit(X, y), X, scheme="ckks")
    root = tmp_path_factory.mktemp("wire")
    bundle.save(root / "m.hec")
    client = he_compute.Client.keygen(bundle, root / "keys", register=False)
    enc = client.encrypt(X[:64])
    evaluator = he_compute.Evaluator(bundle.server_part())
    res = evaluator.evaluate(enc, evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path)))
    return root, bundle, client, enc, res, X


def _members(blob: bytes) -> bytes:
    """A SEAL serialization's body without its zstd layer (SEAL header: compr_mode byte 5, size at 8)."""
    assert blob[5] == 2, "SEAL did not compress with zstd"
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob[16:])


def _bomb(blob: bytes, gib: int = 2) -> bytes:
    """``blob``'s ciphertext, then ``gib`` GiB of zeros, in one zstd stream under SEAL's header."""
    z = zstandard.ZstdCompressor(level=19).compressobj()
    zeros = bytes(1 << 20)
    body = z.compress(_members(blob)) + b"".join(z.compress(zeros) for _ in range(gib << 10)) + z.flush()
    head = bytearray(blob[:16])
    head[8:16] = struct.pack("<Q", 16 + len(body))
    return bytes(head) + body


def _swap_first(c: Container, bomb: bytes, role: str) -> Container:
    from he_compute.schemes.ckks.payload import Payload, pack, unpack

    p = unpack(c.sections["chunk/000000"], role=role)
    forged = pack(Payload(role, p.packing, p.n_samples, [bomb, *p.ciphertexts[1:]], p.extra))
    return Container(c.kind, c.scheme, c.meta, {**c.sections, "chunk/000000": forged})


CHILD = textwrap.dedent("""
    import resource, sys
    import he_compute
    from he_compute.errors import HECError
    from he_compute.formats import container
    root, what = sys.argv[1], sys.argv[2]
    forged = container.parse(open(f"{root}/{what}.forged", "rb").read())
    if what == "result":
        side = he_compute.Client(f"{root}/keys")
        go = lambda: side.decrypt(forged)
    else:
        ev = he_compute.Evaluator(he_compute.load_bundle(f"{root}/m.hec").server_part())
        keys = ev.load_keys(he_compute.read_evaluation_keys(f"{root}/keys/evaluation.keys"))
        go = lambda: ev.evaluate(forged, keys)
    vm = int(next(x for x in open("/proc/self/status") if x.startswith("VmSize")).split()[1]) * 1024
    cap = vm + (600 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        go()
        print("read")
    except HECError as exc:
        print("refused:", exc)
""")


@pytest.mark.parametrize("what", ["result", "input"])
def test_a_zstd_bomb_from_a_stranger_is_not_inflated(ckks, what):
    from he_compute.schemes.ckks.payload import max_ciphertext_bytes, unpack

    root, bundle, client, enc, res, _ = ckks
    role, c = ("output", res) if what == "result" else ("input", enc)
    bomb = _bomb(unpack(c.sections["chunk/000000"], role=role).ciphertexts[0])
    assert len(bomb) <= max_ciphertext_bytes(bundle.manifest["ckks"])  # inside the frame checks: SEAL is reached
    (root / f"{what}.forged").write_bytes(_swap_first(c, bomb, role).to_bytes())
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), what], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(("read", "refused:")), done.stdout


def test_inputs_travel_seeded_and_compressed_and_decrypt_the_same(ckks):
    """Each input ciphertext is SEAL's seeded form under zstd: under 55% of the same ciphertext expanded and
    saved again (SEAL's default zstd), and both decrypt to the same values."""
    from he_compute.schemes.ckks.payload import unpack
    from he_compute.schemes.ckks.seal import dump, sealapi

    _, _, client, enc, _, X = ckks
    backend = client._backend
    engine, s = backend.engine, sealapi()
    dec = s.Decryptor(engine.context, backend._key())
    shipped = unpack(enc.sections["chunk/000000"], role="input").ciphertexts
    for blob in shipped[:3]:
        full = dump(engine.ciphertext(blob))  # SEAL expands the seed on load; saved again, the full ciphertext
        assert blob[5] == full[5] == 2 and len(blob) < 0.55 * len(full)
        values = []
        for form in (blob, full):
            pt = s.Plaintext()
            dec.decrypt(engine.ciphertext(form), pt)
            values.append(np.asarray(engine.encoder.decode_double(pt)))
        assert np.array_equal(values[0], values[1])
    # The ciphertexts hold the standardized features, one feature per ciphertext, samples in the slots.
    pt = s.Plaintext()
    dec.decrypt(engine.ciphertext(shipped[0]), pt)
    assert np.allclose(np.asarray(engine.encoder.decode_double(pt))[:64], X[:64, 0], atol=1e-3)
