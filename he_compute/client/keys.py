"""The client's key directory: secret keys stay here, evaluation keys are exported.

Layout of ``DIR`` (created 0700, files 0600)::

    keyinfo.json      scheme, model id, key id
    secret.keys       container "secretkeys": the secret key material (never leaves DIR)
    client.hec        container "client": the bundle's client part, so decrypt needs no bundle
    evaluation.keys   container "evalkeys": the shareable evaluation keys (see :mod:`he_compute.evalkeys`)
    server.hec        container "server": the bundle's server part, so hec run needs no bundle

Key directories are recorded by key id in the user's registry (:mod:`.registry`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, KeyMismatchError, SecurityError
from ..files import PRIVATE, atomic_write, private_dir
from ..formats import container, evalkeys
from ..formats.container import Container

KEYINFO, SECRET, CLIENT, EVALUATION = "keyinfo.json", "secret.keys", "client.hec", "evaluation.keys"
SERVER = "server.hec"


@dataclass(frozen=True)
class KeyInfo:
    """What a key directory was made for."""

    scheme: str
    model_id: str
    key_id: str


def refuse_existing(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Raise unless ``path`` holds no keys yet (or ``force``): checked before any slow key generation starts."""
    p = Path(path)
    if (p / KEYINFO).exists() and not force:
        raise KeyMismatchError(f"{p} already holds keys: choose another directory, or pass --rotate (or --force) to "
                               f"make new ones and keep the old in {p / 'retired'}/ (add --discard-old to delete "
                               f"them, after which their results can never be decrypted)")
    return p


def retire(path: str | os.PathLike[str]) -> Path:
    """Move the keys in ``path`` to ``path/retired/<key id>/`` (0700), so old results stay decryptable and new
    keys can be made in ``path`` (``hec keygen --rotate``, after a failed check: see the README)."""
    p = Path(path)
    info = read_info(p)
    target = private_dir(p / "retired") / info.key_id[:16]
    private_dir(target)
    for name in (KEYINFO, SECRET, CLIENT, EVALUATION):
        if (p / name).exists():
            os.replace(p / name, target / name)
    if (p / SERVER).exists():  # the model's, not the keys': stays for the new keys, and a copy goes with the old
        shutil.copyfile(p / SERVER, target / SERVER)
    return target


def prepare(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Create (or, with ``force``, reuse) a private key directory."""
    return private_dir(refuse_existing(path, force=force))


def write(path: Path, scheme: str, model_id: str, client_part: Container, secret: bytes, evaluation: bytes,
          server_part: Container | None = None) -> KeyInfo:
    """Store freshly generated keys; the secret file is written 0600 before anything else."""
    evk = evalkeys.new_container(scheme, model_id, evaluation)
    info = KeyInfo(scheme, model_id, evk.meta["key_id"])
    atomic_write(path / SECRET, Container("secretkeys", scheme, {"model_id": model_id}, {"secret": secret}).to_bytes(), PRIVATE)
    atomic_write(path / CLIENT, client_part.to_bytes(), PRIVATE)
    evk.save(path / EVALUATION, PRIVATE)  # written part by part: no second copy of the keys in memory
    if server_part is not None:
        atomic_write(path / SERVER, server_part.to_bytes(), PRIVATE)
    atomic_write(path / KEYINFO, json.dumps(info.__dict__, indent=2).encode(), PRIVATE)
    return info


def check_private(path: Path) -> None:
    """Refuse a key directory (or secret file) that others can read."""
    for target in (path, path / SECRET):
        mode = stat.S_IMODE(target.stat().st_mode)
        if mode & 0o077:
            raise SecurityError(f"{target} is accessible to other users (mode {mode:o}): run chmod go-rwx {target}")


def read_info(path: str | os.PathLike[str]) -> KeyInfo:
    """Read ``keyinfo.json``; a missing or foreign directory gets a one-line error."""
    p = Path(path)
    try:
        raw = json.loads((p / KEYINFO).read_text())
        return KeyInfo(raw["scheme"], raw["model_id"], raw["key_id"])
    except FileNotFoundError:
        raise KeyMismatchError(f"{p} holds no keys: run hec keygen BUNDLE --keys {p}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{p / KEYINFO} is damaged: {exc}") from exc


def read_secret(path: Path, info: KeyInfo) -> bytes:
    """Load the secret key material after checking permissions and ownership by model."""
    check_private(path)
    c = container.read(path / SECRET, expect="secretkeys")
    if c.meta.get("model_id") != info.model_id:
        raise KeyMismatchError(f"{path / SECRET} belongs to another model than {path / KEYINFO}")
    return c.sections["secret"]
