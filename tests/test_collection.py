"""The cyclic garbage collector is paused while a space is built and a plan solved, and given back after."""

from __future__ import annotations

import gc

import pytest

from quantplan.solver import collection, space
from quantplan.solver.api import solve
from quantplan.solver.scenario import make_scenario


def test_paused_gives_the_collector_back_as_it_found_it():
    assert gc.isenabled()
    with collection.paused():
        assert not gc.isenabled()
        with collection.paused():  # nested: the outermost decides
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collection.paused():
            pass
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()
    with pytest.raises(ValueError), collection.paused():
        raise ValueError("an error inside the block")
    assert gc.isenabled()


def test_a_solve_builds_its_space_with_the_collector_paused(monkeypatch):
    seen = []
    build = space._build

    def watched(*args, **kwargs):
        seen.append(gc.isenabled())
        return build(*args, **kwargs)

    monkeypatch.setattr(space, "_build", watched)
    space._LAST_SPACE.clear()
    plan = solve(make_scenario({"model": "llama-3.1-8b", "gpus": ["l4"], "max_gpus": 1, "alternatives": False,
                                "classes": [{"name": "chat", "concurrency": 4, "prompt_tokens": 256,
                                             "output_tokens": 64}]}))
    assert plan.replicas and seen == [False] and gc.isenabled()


def test_a_short_lived_process_keeps_what_a_block_leaves_out_of_later_collections(monkeypatch):
    """Only once a process says it ends soon (the command line, a sweep's worker): objects a paused block leaves
    alive move to the permanent generation (gc.freeze) as it ends; before that, nothing is frozen."""
    monkeypatch.setitem(collection._FREEZE, "on", False)
    gc.unfreeze()
    try:
        with collection.paused():
            kept = [[i] for i in range(1000)]  # noqa: F841  (alive after the block)
        assert gc.get_freeze_count() == 0
        collection.keep_out_of_collections()
        with collection.paused():
            more = [[i] for i in range(1000)]  # noqa: F841
        assert gc.get_freeze_count() >= 2000
    finally:
        gc.unfreeze()


def test_the_command_line_run_as_a_process_says_it_ends_soon(monkeypatch):
    """`quantplan` as its own process (main() without arguments) turns it on; main(argv), as tests and
    embedding programs call it, does not."""
    from quantplan import cli

    monkeypatch.setitem(collection._FREEZE, "on", False)
    assert cli.main(["list", "gpus"]) == 0
    assert collection._FREEZE["on"] is False
    monkeypatch.setattr("sys.argv", ["quantplan", "list", "gpus"])
    try:
        assert cli.main() == 0
        assert collection._FREEZE["on"] is True
    finally:
        gc.unfreeze()
