"""Python's cyclic garbage collector, paused while quantplan builds large acyclic structures.

A candidate space holds hundreds of thousands of small objects (options, their records, configurations) and
none of them form reference cycles; the collector's full passes walk every live object, so as a space grows
they cost more each time: about 40% of a 9-point concurrency sweep and 10% of a 3-class solve on the full
catalog (benchmarks/bench_solver.py). Nothing is lost by pausing it: what is built is kept or freed by
reference counting, and anything cyclic left behind is collected once the collector runs again.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager


_FREEZE = {"on": False}


def keep_out_of_collections() -> None:
    """For a process that ends soon after it plans (the command line, a sweep's worker): what a paused block
    leaves alive (the candidate spaces a sweep keeps for its next point) is moved out of every later
    collection (`gc.freeze`) when the block ends. Otherwise the collector, back on, walks those hundreds of
    thousands of objects again after every solve (about a sixth of a price x rate map). Objects frozen are
    still freed by reference counting; only cycles among them would outlive the process's short life."""
    _FREEZE["on"] = True


@contextmanager
def paused():
    """The collector off for the block; back on afterwards if it was on (nested blocks: the outermost decides)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if _FREEZE["on"]:
                gc.freeze()
            gc.enable()
