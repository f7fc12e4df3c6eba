"""Where a worker evaluates: compiled models and deserialized keys, cached, behind a two-call Protocol.

An :class:`Executor` is told which model and keys a job needs (:meth:`~Executor.load`,
fetching blobs only on a cache miss) and then evaluates payloads with them
(:meth:`~Executor.evaluate`).  :class:`InProcess` does it in the worker's own
process; the sandbox (:mod:`.sandbox`) does the same in a locked-down child.

What the worker signs comes from here, not from the job: :meth:`load` returns
the model id recomputed from the server part it compiled and the key id
recomputed from the evaluation-key container it deserialized, on cache hits
too, and refuses a job whose ids differ.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import settings
from ..errors import KeyMismatchError
from ..formats import container
from ..formats.task import Task

# Cache bounds are settings (he_compute.settings): HEC_KEY_CACHE_MB (serialized evaluation keys kept
# deserialized), HEC_SERVER_CACHE_MB (server parts whose compiled evaluators are kept) and HEC_MAX_CACHED
# (entries per cache: deserialized keys can be many times their serialized size).

if TYPE_CHECKING:  # evaluating happens in a sandbox child or InProcess; the worker's host process never loads it
    from ..evaluator import Evaluator, LoadedKeys

Fetch = Callable[[str], bytes]


class ByteLRU:
    """A least-recently-used cache bounded by the total ``size`` of its entries and by their number.

    Example::

        cache = ByteLRU(1 << 20); cache.put("k", obj, 1000); cache.get("k")
    """

    def __init__(self, max_bytes: int, max_items: int | None = None):
        self.max_bytes, self.max_items = max_bytes, max_items or int(settings.get("HEC_MAX_CACHED"))
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> Any | None:
        """The cached value (now most recent), or ``None``."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key: str, value: Any, size: int) -> None:
        """Insert, evicting the least recently used entries beyond the bounds (never the new one)."""
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        self._items[key] = (value, size)
        self.bytes += size
        while (self.bytes > self.max_bytes or len(self._items) > self.max_items) and len(self._items) > 1:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def clear(self) -> None:
        """Drop every entry."""
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Loaded:
    """What :meth:`Executor.load` checked: the ids to sign, and whether each part came from a cache."""

    model_id: str
    key_id: str
    server_hit: bool
    keys_hit: bool


class Executor(Protocol):
    """Evaluates jobs' payloads; the worker loop does all queue and blob I/O around it."""

    def load(self, task: Task, fetch: Fetch, deadline: float | None = None) -> Loaded:
        """Make ``task``'s model and keys current (``fetch(digest)`` is called on a miss); check their ids.
        ``deadline`` (``time.monotonic()``) bounds the time it may take where the executor can enforce it."""
        ...

    def evaluate(self, payload: bytes, deadline: float | None = None) -> bytes:
        """Evaluate one encrypted chunk with the current model and keys."""
        ...

    def abort(self) -> None:
        """Stop the evaluation in progress at once, if the executor can."""
        ...

    def close(self) -> None:
        """Release what the executor holds."""
        ...


def check_ids(task: Task, model_id: str, key_id: str, scheme: str) -> None:
    """Refuse a job whose named model, keys or scheme differ from what was actually loaded."""
    if model_id != task.model_id or scheme != task.scheme:
        raise KeyMismatchError(f"server part {task.server[:19]} is {scheme} model {model_id[:12]}, "
                               f"the job names {task.scheme} model {task.model_id[:12]}")
    if key_id != task.key_id:
        raise KeyMismatchError(f"evaluation keys {task.keys[:19]} have key id {key_id[:12]}, "
                               f"the job names {task.key_id[:12]}")


class InProcess:
    """Evaluates in this process, with LRU caches of compiled evaluators and deserialized keys.

    No isolation and no time limit: for trusted jobs, tests and ``hec eval``; workers use the sandbox."""

    def __init__(self) -> None:
        self.evaluators = ByteLRU(int(settings.get("HEC_SERVER_CACHE_MB")) << 20)
        self.keys = ByteLRU(int(settings.get("HEC_KEY_CACHE_MB")) << 20)
        self._current: tuple[Evaluator, LoadedKeys] | None = None

    def load(self, task: Task, fetch: Fetch, deadline: float | None = None) -> Loaded:
        """Compile (or reuse) the server part and deserialize (or reuse) the keys that ``task`` names."""
        evaluator, server_hit = self._evaluator(task, fetch)
        keys, keys_hit = self._keys(evaluator, task, fetch)
        check_ids(task, evaluator.model_id, keys.key_id, evaluator.scheme)
        self._current = (evaluator, keys)
        return Loaded(evaluator.model_id, keys.key_id, server_hit, keys_hit)

    def evaluate(self, payload: bytes, deadline: float | None = None) -> bytes:
        """Evaluate one chunk with what :meth:`load` made current."""
        if self._current is None:
            raise RuntimeError("InProcess.evaluate called before load")
        evaluator, keys = self._current
        return evaluator.evaluate_payload(payload, keys)

    def abort(self) -> None:
        """Nothing to abort: evaluation runs in this thread."""

    def close(self) -> None:
        """Drop the caches."""
        self._current = None
        self.evaluators.clear()
        self.keys.clear()

    def _evaluator(self, task: Task, fetch: Fetch) -> tuple[Evaluator, bool]:
        cached = self.evaluators.get(task.server)
        if cached is not None:
            return cached, True
        data = fetch(task.server)
        part = container.parse(data, expect="server", source=f"server part {task.server[:19]}")
        from ..evaluator import Evaluator

        evaluator = Evaluator(part)  # structure, model id and the scheme's safety checks run here
        self.evaluators.put(task.server, evaluator, len(data))
        return evaluator, False

    def _keys(self, evaluator: Evaluator, task: Task, fetch: Fetch) -> tuple[LoadedKeys, bool]:
        cached = self.keys.get(task.keys)
        if cached is not None and cached.model_id == evaluator.model_id:
            return cached, True
        data = fetch(task.keys)
        loaded = evaluator.load_keys(container.parse(data, expect="evalkeys", source=f"evaluation keys {task.keys[:19]}"))
        self.keys.put(task.keys, loaded, len(data))
        return loaded, False
