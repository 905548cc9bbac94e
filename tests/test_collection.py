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
