"""What SEAL's compression saves on CKKS inputs and keys, measured on the same ciphertexts (for ``bench_link``).

he_compute encrypts with the secret key through ``Encryptor.encrypt_symmetric``'s ``Serializable`` form (the
second polynomial replaced by the seed that regenerates it) and makes its relinearization and Galois keys the
same way; SEAL's ``save`` compresses with zstd (its default ``compr_mode`` where it was built with zstd, as
TenSEAL's wheel is). For the report, each ciphertext and key is also written the other three ways:

* seeded, no zstd: the zstd stream after SEAL's 16-byte header inflated (with a bound) and the header
  rewritten to ``compr_mode`` none;
* not seeded, zstd: loaded by SEAL (which expands the seed) and saved again;
* neither: that inflated likewise.

Every variant is loaded back by SEAL and decrypted; the values must equal those of the shipped form.
"""

from __future__ import annotations

import struct

import numpy as np

from bench.common import mb


def _inflate(blob: bytes) -> bytes:
    """SEAL's own serialization of ``blob`` without its zstd layer (SEAL header: compr_mode at byte 5, size at 8)."""
    import zstandard

    if blob[5] != 2:
        return blob
    members = zstandard.ZstdDecompressor().decompressobj().decompress(blob[16:])  # trusted: our own ciphertexts
    head = bytearray(blob[:16])
    head[5] = 0
    head[8:16] = struct.pack("<Q", 16 + len(members))
    return bytes(head) + members


def ckks_sizes(bundle, enc, client) -> str:
    """One markdown line per model: input and key bytes in the four forms, and the decryption check."""
    from he_compute import read_evaluation_keys
    from he_compute.formats.ciphertexts import chunk_name
    from he_compute.schemes.ckks.payload import unpack
    from he_compute.schemes.ckks.seal import dump, load, sealapi

    backend = client._backend  # the benchmark checks by decrypting, so it reaches the client's own engine
    engine = backend.engine
    dec = sealapi().Decryptor(engine.context, backend._key())
    forms = {"seeded+zstd (shipped)": 0, "seeded": 0, "zstd": 0, "neither": 0}
    first = None
    for i in range(len(enc.sections)):
        for ct in unpack(enc.sections[chunk_name(i)], role="input").ciphertexts:
            full = dump(engine.ciphertext(ct))
            variants = {"seeded+zstd (shipped)": ct, "seeded": _inflate(ct), "zstd": full, "neither": _inflate(full)}
            values = []
            for k, v in variants.items():
                forms[k] += len(v)
                if first is None:  # decrypt every form of the first ciphertext
                    pt = sealapi().Plaintext()
                    dec.decrypt(engine.ciphertext(v), pt)
                    values.append(np.asarray(engine.encoder.decode_double(pt)))
            if first is None:
                first = all(np.array_equal(values[0], x) for x in values)
    keys = {"seeded+zstd (shipped)": 0, "seeded": 0, "zstd": 0, "neither": 0}
    payload = unpack(read_evaluation_keys(client.evaluation_keys_path).sections["keys"], role="keys") \
        if "keys" in read_evaluation_keys(client.evaluation_keys_path).sections else None
    if payload is not None:
        for part, blob in zip(payload.extra["parts"], payload.ciphertexts):
            cls = "RelinKeys" if part == "relin" else "GaloisKeys"
            full = dump(load(cls, engine.context, blob, part))
            for k, v in {"seeded+zstd (shipped)": blob, "seeded": _inflate(blob), "zstd": full,
                         "neither": _inflate(full)}.items():
                keys[k] += len(v)
    n = enc.meta["n_samples"]
    name = f"N={engine.n}, {len(bundle.manifest['ckks']['coeff_mod_bit_sizes'])} primes"
    cells = " / ".join(f"{k} {mb(int(v / n))}" for k, v in forms.items())
    kcells = " / ".join(f"{k} {mb(v)}" for k, v in keys.items()) if payload is not None else "none"
    ratio = forms["neither"] / forms["seeded+zstd (shipped)"]
    return (f"- {bundle.manifest.get('model_type', '?')} ({name}): input per sample {cells} "
            f"(shipped is {1 / ratio:.0%} of neither); evaluation keys {kcells}; every form of a ciphertext "
            f"decrypts to the same values: {first}")
