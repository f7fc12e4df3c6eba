"""Secret keys never leave the key directory, and the directory is private."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import he_compute
from he_compute.formats import container


def _secret_windows(client, width: int = 256, per_key: int = 24) -> list[bytes]:
    """Byte windows of every LWE secret key: runs of 32 binary u64 coefficients holding both 0s and 1s.

    Such a window cannot occur by chance in random-looking key or ciphertext
    bytes, nor in zero padding, so finding one elsewhere means a leaked key.
    """
    keyset = client._backend._client.keys._keyset
    windows = []
    for sk in keyset.get_client_keys().get_secret_keys():
        raw = sk.serialize()
        coeffs = raw[-8 * sk.param.dimension():]
        assert set(np.frombuffer(coeffs, dtype="<u8")) == {0, 1}, "expected a binary secret key"
        found = 0
        for start in range(0, len(coeffs) - width, width):
            w = coeffs[start:start + width]
            if len(set(np.frombuffer(w, dtype="<u8"))) == 2:
                windows.append(w)
                found += 1
                if found == per_key:
                    break
    return windows


@pytest.mark.slow
def test_nothing_that_leaves_the_client_holds_secret_key_material(compiled, cancer, tmp_path):
    _, X_test, _, _ = cancer
    c = compiled("tree")
    windows = _secret_windows(c.client)
    assert len(windows) > 100
    enc = c.client.encrypt(X_test[:2])
    evaluator = he_compute.Evaluator(c.bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(c.client.evaluation_keys_path))
    shared = {
        "evaluation keys": c.client.evaluation_keys_path.read_bytes(),
        "bundle": c.bundle_path.read_bytes(),
        "server part": c.bundle.server_part().to_bytes(),
        "ciphertexts": enc.to_bytes(),
        "results": evaluator.evaluate(enc, keys).to_bytes(),
    }
    for name, data in shared.items():
        leaked = [i for i, w in enumerate(windows) if w in data]
        assert not leaked, f"{name} contains secret key material"
    # Positive control: the same search finds the key where it does live.
    secret_file = (c.client.keys_dir / "secret.keys").read_bytes()
    assert all(w in secret_file for w in windows)


def test_key_directory_is_private(compiled):
    keys_dir = compiled("linear").client.keys_dir
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    for f in keys_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_loose_permissions_are_refused(compiled, tmp_path):
    c = compiled("linear")
    bundle = he_compute.load_bundle(c.bundle_path)
    he_compute.Client.keygen(bundle, tmp_path / "k")
    os.chmod(tmp_path / "k", 0o755)
    with pytest.raises(he_compute.SecurityError, match="accessible to other users"):
        he_compute.Client(tmp_path / "k")


def test_keygen_will_not_overwrite_keys(compiled):
    c = compiled("linear")
    with pytest.raises(he_compute.KeyMismatchError, match="already holds keys"):
        he_compute.Client.keygen(c.bundle, c.client.keys_dir)


def test_key_id_is_the_digest_of_nonce_and_keys_and_unique_per_keygen(compiled, tmp_path):
    import hashlib

    c = compiled("linear")
    evk = container.read(c.client.evaluation_keys_path, expect="evalkeys")
    digest = hashlib.sha256(evk.sections["nonce"] + evk.sections["keys"]).hexdigest()
    assert evk.meta["key_id"] == digest == c.client.key_id
    # A quantized linear model needs no server keys at all, yet two keygens get distinct key ids.
    other = he_compute.Client.keygen(c.bundle, tmp_path / "again")
    assert other.key_id != c.client.key_id


# A child that loads the CKKS secret key over and over (as every hec encrypt, decrypt and run --canaries does)
# and then encrypts and decrypts with it, printing one line per round.
_CKKS_LOADER = """
import sys
import numpy as np
import he_compute
keys, rounds = sys.argv[1], int(sys.argv[2])
X = np.load(sys.argv[3])
for i in range(rounds):
    he_compute.Client(keys).encrypt(X)
    print(i, flush=True)
"""


def _files_holding(needle: bytes, roots: list[str]) -> list[str]:
    """Every regular file under ``roots`` (other processes' included) whose bytes contain ``needle``."""
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) < 1 << 26:
                        with open(path, "rb") as f:
                            if needle in f.read():
                                found.append(path)
                except OSError:
                    continue  # gone meanwhile, or not ours to read
    return found


def test_a_local_snooper_never_finds_the_ckks_secret_key_outside_the_key_dir(tmp_path):
    """Attack: another local process scans /dev/shm and the temp directory while a client loads its CKKS
    secret key (every hec encrypt / decrypt / run --canaries does), and after the client is killed.

    The old code wrote the key to ``/dev/shm/hec-seal-*/PID-TID.bin`` (umask mode) on every load and only
    unlinked it afterwards, so the snooper caught it and a SIGKILL left it there for good.
    """
    import signal
    import subprocess
    import sys
    import time

    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    bundle = he_compute.compile(LogisticRegression(max_iter=500).fit(X, y), X, scheme="ckks")
    he_compute.Client.keygen(bundle, tmp_path / "keys")
    np.save(tmp_path / "X.npy", X[:4])
    # The secret as SEAL serialized it: the bytes every load hands to SEAL.
    needle = container.read(tmp_path / "keys" / "secret.keys").sections["secret"]
    assert len(needle) > 10_000
    needle = needle[len(needle) // 2 : len(needle) // 2 + 4096]  # compressed key bytes: random-looking
    # Positive control: the scan finds the key where it does live.
    assert _files_holding(needle, [str(tmp_path / "keys")])

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    roots = ["/dev/shm", str(tmp)] if os.path.isdir("/dev/shm") else [str(tmp)]
    child = subprocess.Popen([sys.executable, "-c", _CKKS_LOADER, str(tmp_path / "keys"), "60",
                              str(tmp_path / "X.npy")],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    leaked: list[str] = []
    try:
        assert child.stdout.readline()  # the first load is done: the child is in its loop
        deadline = time.monotonic() + 20
        # Freeze the child at many points of its loop and look, as a snooper with all the time in the world would.
        while child.poll() is None and time.monotonic() < deadline and not leaked:
            os.kill(child.pid, signal.SIGSTOP)
            leaked = _files_holding(needle, roots)
            os.kill(child.pid, signal.SIGCONT)
            time.sleep(0.003)
    finally:
        child.kill()
        child.wait()
    after_kill = _files_holding(needle, roots)
    assert not leaked, f"the secret key was readable at {leaked} while the client loaded it"
    assert not after_kill, f"a killed client left its secret key at {after_kill}"
    assert not list(tmp.iterdir())
