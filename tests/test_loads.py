"""The candidate space's stacked load models (solver/loads.py) against serving.performances evaluated one
configuration at a time: the same figures, violations and descriptions for every configuration and batch size."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from quantplan.solver import serving
from quantplan.solver.loads import Figures
from quantplan.solver.scenario import make_scenario
from quantplan.solver.space import (ClassDiagnostics, _prepare, build_space, configurations, fit_placement,
                                    resolve_model, useful_batches)

CLASSES = [
    {"name": "chat", "prompt_tokens": 700, "output_tokens": 200, "rate_per_s": 6, "ttft_ms": 800, "tpot_ms": 40,
     "slo_statistic": "p90"},
    {"name": "agents", "prompt_tokens": 3000, "output_tokens": 100, "concurrency": 24, "ttft_ms": 3000,
     "tpot_ms": 60},
    {"name": "long", "prompt_tokens": 9000, "output_tokens": 300, "rate_per_s": 0.5, "ttft_ms": 4000},
]


def _prepared(world, margin):
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["l4", "h100-sxm"], "max_gpus": 2,
                              "methods": ["bf16", "fp8", "awq-int4", "gguf-q4_k_m"], "kv_cache_dtypes": ["fp16"],
                              "margin": margin, "classes": CLASSES})
    per_class = {c["name"]: ClassDiagnostics() for c in CLASSES}
    prepared = []
    for config in configurations(world, scenario, resolve_model(world, scenario), Counter()):
        placed = fit_placement(world, config, scenario.classes)
        if placed is not None:
            prepared.append(_prepare(world, placed, useful_batches(scenario), scenario.classes, 1.0, None,
                                     per_class, margin))
    return scenario, prepared


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b or (math.isfinite(a) and abs(a - b) <= 1e-9 * max(abs(a), abs(b)))
    return a == b


@pytest.mark.parametrize("margin", ["none", "p90"])
def test_stacked_figures_equal_one_configuration_at_a_time(world, margin):
    scenario, prepared = _prepared(world, margin)
    for traffic in scenario.classes:
        jobs = [p.jobs[traffic.name] for p in prepared if traffic.name in p.jobs]
        kinds = {(j.times.scheduling.policy, j.times.scheduling.chunked) for j in jobs}
        # every scheduler branch of the closed forms: mixed chunked, mixed whole prompts, prefill-first
        assert kinds == {("mixed", True), ("mixed", False), ("prefill-first", True)}
        figures = Figures(traffic, jobs)
        assert len(figures.running) == sum(len(j.batches) for j in jobs) > 3 * len(jobs)
        for number, job in enumerate(jobs):
            alone = serving.performances(job.config, traffic, job.times, list(job.batches))
            for position, expected in enumerate(alone):
                element = figures.element(number, position)
                found = figures.performance(element)
                for name in expected.__dataclass_fields__:
                    assert _same(getattr(found, name), getattr(expected, name)), (job.config.key, name)
                assert figures.meets[element] == expected.meets
                assert figures.ttft_stat[element] == pytest.approx(expected.ttft_at(traffic.statistic), rel=1e-12)
                assert figures.tpot_stat[element] == pytest.approx(expected.tpot_at(traffic.statistic), rel=1e-12)
    # the scenario is one where figures differ: some elements meet the SLOs, some do not
    assert 0 < np.mean(figures.meets) < 1


def test_no_configuration_fits_gives_no_work(world):
    traffic = make_scenario({"model": "llama-3.1-8b", "classes": CLASSES[:1]}).classes[0]
    figures = Figures(traffic, [])
    assert len(figures.meets) == 0


def test_space_offers_each_option_at_its_own_figures(world):
    """An option's performance is serving.performance for its configuration and batch alone."""
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["l40s"], "max_gpus": 1, "margin": "none",
                              "kv_cache_dtypes": ["fp16"], "classes": CLASSES[:2]})
    space = build_space(world, scenario, world.with_prices({}))
    assert len(space.options) > 20
    for option in space.options[::7]:
        for traffic in scenario.classes:
            if traffic.name not in option.performance:
                continue
            expected = serving.performance(option.config, traffic, option.timings[traffic.name])
            found = option.performance[traffic.name]
            assert found.meets
            for name in expected.__dataclass_fields__:
                assert _same(getattr(found, name), getattr(expected, name)), (option.key, name)
