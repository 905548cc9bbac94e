"""Candidate evaluation over several processes (solver/forked.py): the same results as one process, the parent's
own objects back, and every failure in a child answered by computing its items in the parent."""

from __future__ import annotations

import os
import sys
import time

import pytest

from quantplan.solver import forked, space
from quantplan.solver.registry import load_world
from quantplan.solver.scenario import make_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the child is a plain fork (Linux only)")


@pytest.fixture
def two(monkeypatch):
    """Forking allowed whatever threads the test run holds, from a handful of items on."""
    monkeypatch.setattr(forked, "available", lambda: True)
    monkeypatch.setattr(forked, "MIN_ITEMS", 4)
    monkeypatch.setattr(forked, "processes", lambda: 2)


def slow_in(pid: int, seconds: float, function):
    """`function`, taking `seconds` longer in process `pid`: the other processes take the items it would have."""
    def slowed(item):
        if os.getpid() == pid:
            time.sleep(seconds)
        return function(item)
    return slowed


def test_items_are_shared_with_a_child_and_the_order_kept(two):
    """Each process takes the next run of items from the shared counter: a parent slower per item (here it sleeps)
    leaves more of them to the child, and the results come back in the items' order."""
    parent = os.getpid()
    found = forked.spread(slow_in(parent, 0.05, lambda item: (item * item, os.getpid())), list(range(9)), [])
    assert [value for value, _ in found] == [item * item for item in range(9)]
    assert {pid for _, pid in found} - {parent}


def test_more_cpus_take_more_children(two, monkeypatch):
    monkeypatch.setattr(forked, "processes", lambda: 3)
    parent = os.getpid()
    work = slow_in(parent, 0.05, lambda item: (item * 10, os.getpid()))
    found = forked.spread(lambda item: (time.sleep(0.01), work(item))[1], list(range(10)), [])
    assert [value for value, _ in found] == [item * 10 for item in range(10)]
    assert 1 <= len({pid for _, pid in found} - {parent}) <= 2


def test_the_counter_hands_each_item_out_once_a_run_at_a_time():
    import multiprocessing

    counter = multiprocessing.get_context("fork").Value("l", 0)
    first, second = forked._runs(counter, 3, 10), forked._runs(counter, 3, 10)
    taken = [list(next(first)), list(next(second)), list(next(first)), *map(list, second), *map(list, first)]
    assert taken == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_processes_follow_the_cpus_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert forked.processes() == forked.MAX_PROCESSES
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert forked.processes() == 1


def test_known_objects_come_back_as_themselves(two):
    records = [object(), object()]
    found = forked.spread(lambda item: {"record": records[item % 2], "copy": [item]}, list(range(6)), records)
    assert all(result["record"] is records[index % 2] for index, result in enumerate(found))
    assert [result["copy"] for result in found] == [[item] for item in range(6)]


def test_none_and_arrays_travel_by_value(two):
    """None is no known object (a lookup's default must not pass for it): the child's answer is taken."""
    import numpy as np

    parent = os.getpid()
    found = forked.spread(slow_in(parent, 0.05, lambda item: (None, np.full(2, item), os.getpid())), list(range(6)),
                          [])
    assert [(a, b.tolist()) for a, b, _ in found] == [(None, [item, item]) for item in range(6)]
    assert {pid for _, _, pid in found} - {parent}


def test_a_child_that_fails_leaves_its_items_to_the_parent(two):
    parent = os.getpid()

    def only_here(item):
        if os.getpid() != parent:
            raise RuntimeError("broken in the child")
        return item + 1

    assert forked.spread(slow_in(parent, 0.05, only_here), list(range(8)), []) == list(range(1, 9))


def test_a_fork_that_fails_leaves_its_part_to_the_parent(two, monkeypatch):
    def refused():
        raise OSError("no more processes")

    monkeypatch.setattr(os, "fork", refused)
    assert forked.spread(lambda item: item * 2, list(range(6)), []) == [item * 2 for item in range(6)]


def test_a_result_that_cannot_travel_is_computed_in_the_parent(two):
    parent = os.getpid()
    found = forked.spread(slow_in(parent, 0.05, lambda item: (lambda: item) if os.getpid() != parent else item),
                          list(range(6)), [])
    assert found == list(range(6))  # a function does not pickle: the child's answer is not taken


def test_a_child_whose_state_changed_is_not_taken(two):
    """A plugin dropped in the child (its count of drops moves) must be dropped in the parent, with its
    message: the parent computes those items again itself."""
    parent = os.getpid()
    state = {"dropped": 0}

    def work(item):
        if os.getpid() != parent:
            state["dropped"] = 1
        return (item, os.getpid())

    found = forked.spread(slow_in(parent, 0.05, work), list(range(6)), [], lambda: state["dropped"])
    assert [item for item, _ in found] == list(range(6))
    assert {pid for _, pid in found} == {parent}


def test_too_few_items_or_no_second_cpu_stay_in_this_process(monkeypatch):
    parent = os.getpid()
    monkeypatch.setattr(forked, "available", lambda: True)
    assert {pid for pid in forked.spread(lambda _: os.getpid(), list(range(5)), [])} == {parent}  # < MIN_ITEMS
    monkeypatch.setattr(forked, "available", lambda: False)
    monkeypatch.setattr(forked, "MIN_ITEMS", 1)
    assert {pid for pid in forked.spread(lambda _: os.getpid(), list(range(5)), [])} == {parent}


def test_a_space_built_over_two_processes_is_the_space_built_in_one(two, monkeypatch):
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["l40s", "a100-80gb", "h100-sxm"],
                              "classes": [{"name": "chat", "concurrency": 16, "ttft_ms": 2000, "tpot_ms": 60},
                                          {"name": "rag", "rate_per_s": 1.0, "prompt_tokens": 4000,
                                           "output_tokens": 200, "ttft_ms": 3000}]})

    def options(split: bool):
        monkeypatch.setattr(forked, "MIN_ITEMS", 4 if split else 10**9)
        world = load_world()
        built = space.build_space(world, scenario, world.with_prices({}))
        return world, built

    world, two_processes = options(True)
    _, one_process = options(False)
    assert len(two_processes.options) == len(one_process.options) > 0
    for a, b in zip(two_processes.options, one_process.options):
        assert a.key == b.key and a.cost_per_hour == b.cost_per_hour
        assert a.config.gpu is world.gpus.get(a.config.gpu.id)  # the parent's records, not copies
        for name, figures in a.performance.items():
            other = b.performance[name]
            assert (figures.capacity, figures.ttft_ms, figures.tpot_ms) == (other.capacity, other.ttft_ms,
                                                                             other.tpot_ms)
    assert two_processes.incompatible == one_process.incompatible


def test_the_environment_can_keep_everything_in_one_process(monkeypatch):
    monkeypatch.setenv("QUANTPLAN_FORK", "0")
    assert not forked.available()


def test_without_a_semaphore_for_the_counter_everything_stays_in_this_process(two, monkeypatch):
    """Some sandboxes refuse the semaphore a shared counter needs (multiprocessing raises OSError): the items are
    computed here, in order."""
    import multiprocessing

    def refused(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    context = multiprocessing.get_context("fork")
    monkeypatch.setattr(type(context), "Value", refused)
    parent = os.getpid()
    found = forked.spread(lambda item: (item + 1, os.getpid()), list(range(6)), [])
    assert found == [(i + 1, parent) for i in range(6)]
