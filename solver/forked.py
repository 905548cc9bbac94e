"""Work split over processes: forked children compute their share of the items while the parent computes its own.

Candidate evaluation is Python (plugin calls, records) and holds the interpreter's lock, so threads cannot share
it out; each forked child starts with the parent's memory (the catalogs, the plugins, the configurations) and sends
back only its results. The objects every process holds from before the fork (the `known` ones: catalog records,
configurations, the world) travel by identity, not by value: the parent gets its own objects back, so results
computed in the child are the very records the parent would have made, and the same input gives the same plan.

One process per CPU, at most MAX_PROCESSES (two on the two-core machines this project is measured on). A child is
a plain `os.fork` (Linux only, where forking a process with no other thread running is safe) and only when there
is a second CPU and this process is not itself a worker of a pool (a sweep's points already take the CPUs);
`QUANTPLAN_FORK=0` in the environment keeps everything in one process. Whatever goes wrong in a child (an
exception, a plugin dropped there, a result that cannot travel), the parent computes that child's items itself:
the answer is the same, only slower.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading

MIN_ITEMS = 200  # fewer items than this: the fork and the transfer cost more than the second CPU saves
MAX_PROCESSES = 4  # more: each child fills its own caches and pickles its answer, and the parent reads them in turn
_ABSENT = object()  # not None: None itself travels by value


def available() -> bool:
    import multiprocessing

    return (sys.platform == "linux" and os.environ.get("QUANTPLAN_FORK", "1") != "0"
            and (os.cpu_count() or 1) >= 2
            and multiprocessing.parent_process() is None and threading.active_count() == 1)


def processes() -> int:
    """How many processes share the work: one per CPU, at most MAX_PROCESSES."""
    return max(1, min(os.cpu_count() or 1, MAX_PROCESSES))


def spread(function, items: list, known, unchanged=lambda: 0, minimum: int | None = None) -> list:
    """[function(item) for item in items], with the items k, k + n, k + 2n ... computed in forked child k of
    n - 1 (n = `processes()`, when `available` and there are at least `minimum` items, by default MIN_ITEMS),
    the parent computing the items 0, n, 2n ... `known`: the objects that exist before the fork and that results
    may refer to (they travel by identity). `unchanged()`: a figure of the parent's state that `function` must
    leave as it is (the plugins dropped so far): where a child's differs, that child's results are not taken."""
    parts = processes()
    if parts < 2 or len(items) < (MIN_ITEMS if minimum is None else minimum) or not available():
        return [function(item) for item in items]
    table = {id(obj): obj for obj in known}
    before = unchanged()
    children = []
    for part in range(1, parts):
        try:
            reading, writing = os.pipe()
        except OSError:  # no more descriptors: the parent computes the remaining parts
            break
        try:
            child = os.fork()
        except OSError:  # no more processes: the same
            os.close(reading)
            os.close(writing)
            break
        if child == 0:  # a child: compute, send, leave without running the parent's exit handlers
            os.close(reading)
            _answer(function, items[part::parts], table, unchanged, before, writing)
        os.close(writing)
        children.append((part, child, reading))
    merged = [None] * len(items)
    answers = {}
    merged[0::parts] = [function(item) for item in items[0::parts]]
    for part, child, reading in children:
        with os.fdopen(reading, "rb") as pipe:
            data = pipe.read()
        os.waitpid(child, 0)
        try:
            answers[part] = _Unpickler(io.BytesIO(data), table).load()
        except Exception:  # noqa: BLE001 - a truncated or unreadable answer: computed here instead
            answers[part] = ("failed",)
    for part in range(1, parts):
        answer = answers.get(part, ("failed",))
        merged[part::parts] = answer[1] if answer[0] == "done" else [function(item) for item in items[part::parts]]
    return merged


def _answer(function, items: list, table: dict, unchanged, before, writing: int) -> None:
    """A child's work: its items' results (or why there are none) down the pipe, then exit, whatever happens (a
    child must never return into the parent's code)."""
    code = 1
    try:
        try:
            found = [function(item) for item in items]
            payload = ("dropped",) if unchanged() != before else ("done", found)
            buffer = io.BytesIO()
            _Pickler(buffer, table).dump(payload)
            data, code = buffer.getvalue(), 0
        except BaseException:  # noqa: BLE001 - anything: the parent computes these items itself
            data = pickle.dumps(("failed",))
        with os.fdopen(writing, "wb") as pipe:
            pipe.write(data)
    finally:
        os._exit(code)


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
