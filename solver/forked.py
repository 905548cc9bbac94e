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

import gc
import io
import os
import pickle
import sys
import threading

MIN_ITEMS = 200  # fewer items than this: the fork and the transfer cost more than the second CPU saves
MAX_PROCESSES = 4  # more: each child fills its own caches and pickles its answer, and the parent reads them in turn
_ABSENT = object()  # not None: None itself travels by value


_CHILD = {"on": False}  # this process is a forked child: it computes its share and never forks again


def available() -> bool:
    import multiprocessing

    return (sys.platform == "linux" and os.environ.get("QUANTPLAN_FORK", "1") != "0"
            and (os.cpu_count() or 1) >= 2 and not _CHILD["on"]
            and multiprocessing.parent_process() is None and threading.active_count() == 1)


def processes() -> int:
    """How many processes share the work: one per CPU, at most MAX_PROCESSES."""
    return max(1, min(os.cpu_count() or 1, MAX_PROCESSES))


def spread(function, items: list, known, unchanged=lambda: 0, minimum: int | None = None,
           run: int | None = None) -> list:
    """[function(item) for item in items], shared with n - 1 forked children (n = `processes()`, when `available`
    and there are at least `minimum` items, by default MIN_ITEMS): every process takes the next run of items
    from a counter they share until none is left, so the parent, which also reads the children's answers, and
    a child, which also pickles its own, end about together whatever each item costs. `known`: the objects
    that exist before the fork and that results may refer to (they travel by identity). `unchanged()`: a figure
    of the parent's state that `function` must leave as it is (the plugins dropped so far): where a child's
    differs, that child's results are not taken. Items a child did not answer for are computed by the parent.
    `run`: items taken at a time (by default a sixteenth of a process's share), where neighbours share work."""
    parts = processes()
    if parts < 2 or len(items) < (MIN_ITEMS if minimum is None else minimum) or not available():
        return [function(item) for item in items]
    import multiprocessing

    try:  # a shared counter needs a semaphore, which some sandboxes do not give (OSError): then one process
        counter = multiprocessing.get_context("fork").Value("l", 0)
    except (OSError, ImportError):
        return [function(item) for item in items]
    table = {id(obj): obj for obj in known}
    before = unchanged()
    run = run or max(1, len(items) // (parts * RUNS_PER_PROCESS))
    children = []
    gc.freeze()  # a child's collections leave the parent's objects alone (no pages copied to look them over)
    try:
        for _ in range(1, parts):
            try:
                reading, writing = os.pipe()
            except OSError:  # no more descriptors: the parent computes the rest
                break
            try:
                child = os.fork()
            except OSError:  # no more processes: the same
                os.close(reading)
                os.close(writing)
                break
            if child == 0:  # a child: compute, send, leave without running the parent's exit handlers
                os.close(reading)
                _answer(function, items, counter, run, table, unchanged, before, writing)
            os.close(writing)
            children.append((child, reading))
    finally:
        gc.unfreeze()
    merged = [_ABSENT] * len(items)
    for taken in _runs(counter, run, len(items)):
        for index in taken:
            merged[index] = function(items[index])
    for child, reading in children:
        with os.fdopen(reading, "rb") as pipe:
            data = pipe.read()
        os.waitpid(child, 0)
        answered = _read(data, table)
        for index, found in answered:
            merged[index] = found
    return [function(item) if found is _ABSENT else found for item, found in zip(items, merged)]


RUNS_PER_PROCESS = 16  # runs of items per process: the shares end within about one run of each other


def _runs(counter, run: int, count: int):
    """The runs of item indices this process takes, one at a time from the shared counter."""
    while True:
        with counter.get_lock():
            first = counter.value
            counter.value = first + run
        if first >= count:
            return
        yield range(first, min(first + run, count))


def _answer(function, items: list, counter, run: int, table: dict, unchanged, before, writing: int) -> None:
    """A child's work, then exit whatever happens (a child must never return into the parent's code): each run's
    (index, result) pairs pickled as soon as it is computed (the pickling is part of a child's share of the time,
    so the counter gives it fewer items), then whether they stand ("done"; "dropped" where a plugin was dropped
    here), all down the pipe at the end."""
    code = 1
    _CHILD["on"] = True
    try:
        buffer = io.BytesIO()
        try:
            pickler = _Pickler(buffer, table)  # one memo over the runs: a record shared by two runs travels once
            for taken in _runs(counter, run, len(items)):
                pickler.dump([(index, function(items[index])) for index in taken])
            pickler.dump(("dropped",) if unchanged() != before else ("done",))
            data, code = buffer.getvalue(), 0
        except BaseException:  # noqa: BLE001 - anything: the parent computes these items itself
            data = pickle.dumps(("failed",))
        with os.fdopen(writing, "wb") as pipe:
            pipe.write(data)
    finally:
        os._exit(code)


def _read(data: bytes, table: dict) -> list:
    """A child's (index, result) pairs; none where it failed, dropped a plugin or its answer cannot be read (the
    parent computes those items itself)."""
    unpickler = _Unpickler(io.BytesIO(data), table)
    found = []
    try:
        while True:
            part = unpickler.load()
            if isinstance(part, tuple):
                return found if part == ("done",) else []
            found += part
    except Exception:  # noqa: BLE001 - a truncated or unreadable answer
        return []


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
