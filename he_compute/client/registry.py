"""Where this user's key directories are, so that ``hec run x.enc`` and ``hec decrypt y.enc`` need no flags.

Every ciphertexts and results container names the key id it was made under.
``hec keygen`` (:meth:`Client.keygen`) records ``key id -> key directory`` in
a small registry kept in the user's state, and the commands that need keys
look the directory up by that id (or, for ``hec encrypt``, by model id).

The registry is ``$HEC_HOME/keydirs.json`` (default ``~/.hec/keydirs.json``),
0600 in a 0700 directory.  It holds paths, never keys.  An entry is believed
only when the directory it names still says, in its own ``keyinfo.json``, that
it holds that key id; entries that no longer do are dropped on the next write.

Example::

    remember(Path("keys/"), info)          # done by Client.keygen
    find(enc.meta["key_id"])               # -> Path("/home/me/keys") or None
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import FormatError, HECError, KeyMismatchError
from ..files import PRIVATE, atomic_write, private_dir
from ..transport.locations import HOME_ENV, hec_home  # noqa: F401 (HOME_ENV: its name, re-exported)
from . import keys as keydir

REGISTRY = "keydirs.json"
_VERSION = 1


def home() -> Path:
    """The user's he_compute state directory (``$HEC_HOME``, else ``~/.hec``)."""
    return hec_home()


def registry_path() -> Path:
    """The registry file."""
    return home() / REGISTRY


def _load(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path} is damaged ({exc}): delete it and pass --keys DIR until hec keygen rebuilds it") from exc
    entries = raw.get("keys") if isinstance(raw, dict) and raw.get("version") == _VERSION else None
    if not isinstance(entries, dict):
        raise FormatError(f"{path} is not a key registry: delete it and pass --keys DIR until hec keygen rebuilds it")
    return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("dir"), str)}


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    """Hold the registry's lock (two keygens at once must not drop each other's entry)."""
    directory = private_dir(home())
    with open(directory / f".{REGISTRY}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield directory / REGISTRY
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _holds(directory: Path, key_id: str) -> bool:
    """Whether ``directory`` still holds the keys ``key_id`` (its own keyinfo.json says so)."""
    try:
        return keydir.read_info(directory).key_id == key_id
    except HECError:
        return False


def remember(keys_dir: str | os.PathLike[str], info: keydir.KeyInfo) -> None:
    """Record that ``keys_dir`` holds the keys ``info.key_id``; drop entries whose directory moved on."""
    with _locked() as path:
        entries = {k: v for k, v in _load(path).items() if _holds(Path(v["dir"]), k)}
        entries[info.key_id] = {"dir": str(Path(keys_dir).resolve()), "model_id": info.model_id,
                                "scheme": info.scheme, "created": time.time()}
        atomic_write(path, json.dumps({"version": _VERSION, "keys": entries}, indent=2).encode(), PRIVATE)


def find(key_id: str) -> Path | None:
    """The key directory holding ``key_id`` on this machine, or ``None``."""
    entry = _load(registry_path()).get(str(key_id))
    if entry is None or not _holds(Path(entry["dir"]), str(key_id)):
        return None
    return Path(entry["dir"])


def find_for_model(model_id: str) -> list[Path]:
    """Key directories made for ``model_id``, newest first."""
    entries = [(v.get("created", 0), k, Path(v["dir"])) for k, v in _load(registry_path()).items()
               if v.get("model_id") == model_id]
    return [d for _, k, d in sorted(entries, key=lambda e: -float(e[0])) if _holds(d, k)]


def keys_for(key_id: str, keys_dir: str | os.PathLike[str] | None, what: str) -> Path:
    """``keys_dir`` if given, else the registered directory of ``key_id``; one-line error naming the flag."""
    if keys_dir is not None:
        return Path(keys_dir)
    found = find(key_id)
    if found is None:
        raise KeyMismatchError(f"no key directory on this machine holds key {str(key_id)[:12]} that {what} was "
                               f"made with: pass --keys DIR")
    return found


def server_part_path(keys_dir: Path) -> Path:
    """The bundle's server part kept in a key directory by keygen; one-line error naming ``--bundle`` if absent."""
    path = keys_dir / keydir.SERVER
    if not path.is_file():
        raise KeyMismatchError(f"{keys_dir} keeps no server part (keys made before he_compute kept one): "
                               f"pass --bundle FILE")
    return path
