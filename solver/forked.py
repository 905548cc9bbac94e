"""Work split over two processes: a forked child computes every other item while the parent computes the rest.

Candidate evaluation is Python (plugin calls, records) and holds the interpreter's lock, so threads cannot share
it out; a forked child starts with the parent's memory (the catalogs, the plugins, the configurations) and sends
back only its results. The objects both processes hold from before the fork (the `known` ones: catalog records,
configurations, the world) travel by identity, not by value: the parent gets its own objects back, so results
computed in the child are the very records the parent would have made, and the same input gives the same plan.

The child is a plain `os.fork` (Linux only, where forking a process with no other thread running is safe) and
only when there is a second CPU and this process is not itself a worker of a pool (a sweep's points already
take the CPUs); `QUANTPLAN_FORK=0` in the environment keeps everything in one process. Whatever goes wrong
in the child (an exception, a plugin dropped there, a result that cannot travel), the parent computes the
child's items itself: the answer is the same, only slower.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading

MIN_ITEMS = 200  # fewer items than this: the fork and the transfer cost more than the second CPU saves
_SWITCH = {"off": False}
_ABSENT = object()  # not None: None itself travels by value


def disable() -> None:
    """Compute everything in this process (tests of the serial path, a caller that forks on its own)."""
    _SWITCH["off"] = True


def available() -> bool:
    import multiprocessing

    return (sys.platform == "linux" and not _SWITCH["off"] and os.environ.get("QUANTPLAN_FORK", "1") != "0"
            and (os.cpu_count() or 1) >= 2
            and multiprocessing.parent_process() is None and threading.active_count() == 1)


def in_two(function, items: list, known, unchanged=lambda: 0, minimum: int | None = None) -> list:
    """[function(item) for item in items], the odd-numbered items computed in a forked child (when `available`
    and there are at least `minimum` items, by default MIN_ITEMS). `known`: the objects that exist before the
    fork and that results may refer to (they travel by identity). `unchanged()`: a figure of the parent's state
    that `function` must leave as it is (the plugins dropped so far): where the child's differs, the child's
    results are not taken."""
    if len(items) < (MIN_ITEMS if minimum is None else minimum) or not available():
        return [function(item) for item in items]
    table = {id(obj): obj for obj in known}
    before = unchanged()
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child: compute, send, leave without running the parent's exit handlers
        os.close(reading)
        code = 0
        try:
            found = [function(item) for item in items[1::2]]
            payload = ("dropped",) if unchanged() != before else ("done", found)
            buffer = io.BytesIO()
            _Pickler(buffer, table).dump(payload)
            data = buffer.getvalue()
        except BaseException:  # noqa: BLE001 - anything: the parent computes these items itself
            data, code = pickle.dumps(("failed",)), 1
        with os.fdopen(writing, "wb") as pipe:
            pipe.write(data)
        os._exit(code)
    os.close(writing)
    mine = [function(item) for item in items[0::2]]
    with os.fdopen(reading, "rb") as pipe:
        data = pipe.read()
    os.waitpid(child, 0)
    try:
        answer = _Unpickler(io.BytesIO(data), table).load()
    except Exception:  # noqa: BLE001 - a truncated or unreadable answer: computed here instead
        answer = ("failed",)
    theirs = answer[1] if answer[0] == "done" else [function(item) for item in items[1::2]]
    merged = [None] * len(items)
    merged[0::2], merged[1::2] = mine, theirs
    return merged


class _Pickler(pickle.Pickler):
    def __init__(self, file, table: dict) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.table = table

    def persistent_id(self, obj):
        key = id(obj)
        return key if self.table.get(key, _ABSENT) is obj else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, table: dict) -> None:
        super().__init__(file)
        self.table = table

    def persistent_load(self, key):
        return self.table[key]
