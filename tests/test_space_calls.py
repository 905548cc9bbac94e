"""What the candidate space asks of the plugins: class-independent answers once per configuration, and
result checks only on plugins that are not built in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from quantplan.plugins.builtin import builtin_plugins
from quantplan.plugins.hookspecs import hookimpl
from quantplan.plugins.manager import make_plugin_set, take_failures
from quantplan.solver.registry import build_world
from quantplan.solver.scenario import make_scenario
from quantplan.solver.space import build_space, served_figures
from quantplan.solver.terms import Term

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# two classes with different lengths and contexts: per class, a step model and a memory evaluation each
CLASSES = [
    {"name": "chat", "prompt_tokens": 512, "output_tokens": 128, "concurrency": 8, "ttft_ms": 2000, "tpot_ms": 80},
    {"name": "docs", "prompt_tokens": 4000, "output_tokens": 200, "rate_per_s": 0.5, "ttft_ms": 8000},
]


class Counting:
    """Answers nothing, counts what it is asked."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: dict[str, list] = {"scheduling": [], "memory": [], "step": []}

    @hookimpl
    def quantplan_scheduling(self, config):
        self.calls["scheduling"].append(config.key)
        return None

    @hookimpl
    def quantplan_memory_terms(self, config, context_tokens):
        self.calls["memory"].append((config.key, context_tokens, _batch(config)))
        return []

    @hookimpl
    def quantplan_step_terms(self, config, step):
        self.calls["step"].append((config.key, step.phase))
        return []


def _batch(config):
    return "array" if hasattr(config.batch, "shape") else config.batch


def _space(extra):
    plugins = make_plugin_set(extra=extra, entry_points=False, strict=False)
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["l4", "h100-sxm"], "max_gpus": 2,
                              "methods": ["bf16", "fp8", "awq-int4"], "kv_cache_dtypes": ["fp16"],
                              "classes": CLASSES, "alternatives": False})
    world = build_world(plugins)
    return plugins, scenario, build_space(world, scenario, world.with_prices({}))


def test_class_independent_answers_are_asked_once_per_configuration():
    counting = Counting()
    _, scenario, space = _space([counting])
    keys = {o.config.key.rsplit("/b", 1)[0] for o in space.options}  # configurations with an option
    assert keys
    scheduled = counting.calls["scheduling"]
    assert len(scheduled) == len(set(scheduled))  # the engine's scheduler: once per configuration, not per class
    memory = counting.calls["memory"]
    at_one = [(key, context) for key, context, batch in memory if batch == 1]
    assert len(at_one) == len(set(at_one))  # memory at batch 1: once per configuration and context
    contexts = {c.context_tokens for c in scenario.classes}
    assert {context for _, context in at_one} <= contexts | {1}
    arrays = [(key, context) for key, context, batch in memory if batch == "array"]
    assert len(arrays) == len(set(arrays))  # the batch-size arrays: once per configuration and class
    # two classes of different lengths: two step models (a decode and a prefill probe each) per configuration
    steps = counting.calls["step"]
    per_configuration = {}
    for key, phase in steps:
        per_configuration.setdefault(key, []).append(phase)
    assert all(sorted(p) == ["decode", "decode", "prefill", "prefill"] for p in per_configuration.values())


def test_only_built_in_plugins_are_trusted():
    plugins = make_plugin_set(catalogs=[EXAMPLES / "my-gpus.toml"], extra=[Counting()], entry_points=False)
    assert plugins.trusted == {p.name for p in builtin_plugins()}
    assert "catalog:my-gpus.toml" not in plugins.trusted and "counting" not in plugins.trusted


class NegativeMemory:
    """A plugin registered in code whose memory term is junk: still checked on every call."""

    name = "negative-memory"

    @hookimpl
    def quantplan_memory_terms(self, config, context_tokens):
        return [Term("weights_bytes", -1.0, self.name, "negative weights")]


def _three_devices(traffic: dict):
    """Llama-3.1-8B on L40S, A100 and L4 (up to 2 GPUs) for one class."""
    return make_scenario({"model": "llama-3.1-8b", "gpus": ["l40s", "a100-80gb", "l4"], "max_gpus": 2,
                          "classes": [traffic]})


def _described(space):
    """Everything a space holds, comparable: options (configurations by key), reasons, diagnostics, counts."""
    return ([repr(replace(o, config=o.config.key)) for o in space.options], space.incompatible,
            {n: (d.fits, d.best_ttft, d.best_tpot, d.smallest_memory) for n, d in space.per_class.items()},
            space.configurations)


def _forget_kept_spaces():
    """Drop what build_space keeps between calls, so the next build starts afresh."""
    from quantplan.solver import space as space_module

    space_module._FIRST_PASS.clear()
    space_module._LAST_SPACE.clear()
    space_module._LAST_CONFIGURATIONS.clear()


def test_a_junk_answer_at_candidate_time_is_still_caught():
    plugins, _, space = _space([NegativeMemory()])
    _, _, plain = _space([])
    assert [o.key for o in space.options] == [o.key for o in plain.options]
    assert [(f.name, f.error) for f in plugins.failures] == [
        ("negative-memory", "quantplan_memory_terms returned weights_bytes = -1 (negative) ('negative weights')")]
    assert "negative-memory" not in plugins.trusted
    take_failures()


def test_a_sweep_over_load_slo_and_price_asks_the_plugins_once(world, monkeypatch):
    """Two spaces that differ only in load, SLOs and a price: the second reuses the first pass (plugin calls)
    of the first, and its options, diagnostics and counts are those a fresh build gives."""
    from quantplan.solver import space as space_module

    def scenario(rate, ttft):
        return _three_devices({"name": "api", "prompt_tokens": 1024, "output_tokens": 256, "rate_per_s": rate,
                               "ttft_ms": ttft, "tpot_ms": 60})

    monkeypatch.setenv("QUANTPLAN_FORK", "0")  # the calls counted are this process's: all of them here
    calls = []
    first_pass = space_module._first_pass
    monkeypatch.setattr(space_module, "_first_pass", lambda *a: calls.append(1) or first_pass(*a))
    build_space(world, scenario(2.0, 1500), world.with_prices({}))
    fresh_calls = len(calls)
    assert fresh_calls > 50
    again = build_space(world, scenario(6.0, 800), world.with_prices({"l40s": 0.5}))
    assert len(calls) == fresh_calls  # nothing asked of the plugins again
    _forget_kept_spaces()
    fresh = build_space(world, scenario(6.0, 800), world.with_prices({"l40s": 0.5}))
    assert len(calls) == 2 * fresh_calls
    assert _described(again) == _described(fresh)
    assert {o.cost_per_hour for o in again.options if o.config.gpu.id == "l40s"} >= {0.5}


def test_a_price_change_reprices_the_last_space(world, monkeypatch):
    """The same scenario at other prices: no plugin call but the cost per configuration, no load model; the
    options are those a fresh build at the new prices gives, each at its configuration's new price."""
    from quantplan.solver import space as space_module

    scenario = _three_devices({"name": "api", "prompt_tokens": 1024, "output_tokens": 256, "rate_per_s": 3.0,
                               "ttft_ms": 1500, "tpot_ms": 60})
    cheap = world.with_prices({"l40s": 0.5})
    builds = []
    build = space_module._build
    monkeypatch.setattr(space_module, "_build", lambda *a: builds.append(1) or build(*a))
    first = build_space(world, scenario, world.with_prices({}))
    again = build_space(world, scenario, cheap)
    assert len(builds) == 1  # re-priced, not rebuilt
    _forget_kept_spaces()
    fresh = build_space(world, scenario, cheap)
    assert len(builds) == 2
    assert _described(again) == _described(fresh)
    l40s = {o.config.gpus * 0.5 for o in again.options if o.config.gpu.id == "l40s"}
    assert {o.cost_per_hour for o in again.options if o.config.gpu.id == "l40s"} == l40s  # 0.5 $/h per GPU
    assert {o.cost_per_hour for o in first.options if o.config.gpu.id == "l40s"}.isdisjoint(l40s)
    # the kept space is not the caller's: changing the list handed out leaves the next answer whole
    again.options.clear()
    assert _described(build_space(world, scenario, cheap)) == _described(fresh)


def test_configurations_priced_by_built_in_plugins_are_priced_once_per_device_and_size(world):
    """Every configuration of the full catalog, at the catalog's prices and at a price changed by hand: the costs
    asked once per (device, GPUs per replica) are those asked of every configuration; an H100 at $3/h costs
    $12/h for four."""
    from collections import Counter

    from quantplan.solver.space import _configurations, _cost, _costs

    scenario = make_scenario({"model": "llama-3.1-70b", "classes": CLASSES[:1]})
    model = world.models.get("llama-3.1-70b")
    listed, _ = _configurations(world, scenario, model)
    assert len(listed) > 1000
    for prices in (world.with_prices({}), world.with_prices({"h100-sxm": 3.0})):
        assert _costs(world, listed, prices) == [_cost(world, config, prices) for config in listed]
    dear = _costs(world, listed, world.with_prices({"h100-sxm": 3.0}))
    four = Counter(cost for config, cost in zip(listed, dear) if config.gpu.id == "h100-sxm" and config.gpus == 4)
    assert list(four) == [12.0]


def test_sweep_points_at_one_load_run_next_to_each_other():
    """A price x rate map: points at one rate (differing in price only) are neighbours, so a process re-prices
    the space it built; results come back in grid order."""
    from quantplan.solver.grid import _in_grid_order, by_load

    grid = [(x, y) for y in (1.0, 5.0) for x in (2.0, 3.0, 4.0)]  # x: a price, y: a rate
    assert by_load(("price:h100-sxm", "rate"), grid) == [0, 1, 2, 3, 4, 5]
    flipped = [(y, x) for x, y in grid]  # rate first: grid order alternates rates
    assert by_load(("rate", "price:h100-sxm"), flipped) == [0, 1, 2, 3, 4, 5]
    alternating = [(r, p) for p in (2.0, 3.0) for r in (1.0, 5.0)]
    assert by_load(("rate", "price:h100-sxm"), alternating) == [0, 2, 1, 3]
    assert by_load(("price-factor", "price:l4"), [(1, 1), (2, 2)]) == [0, 1]  # only prices: grid order
    order = [0, 2, 1, 3]
    assert _in_grid_order(order, [{"i": 0}, {"i": 2}, {"i": 1}, {"i": 3}]) == [{"i": i} for i in range(4)]


def test_a_concurrency_sweep_asks_the_plugins_for_memory_only(world, monkeypatch):
    """Concurrency changes the batch sizes worth trying (the class's users join them): the second space asks
    for memory at its sizes, but no step model, scheduler or quality again, and equals a fresh build."""
    from quantplan.solver import space as space_module

    def scenario(users):
        return _three_devices({"name": "chat", "prompt_tokens": 1024, "output_tokens": 256, "concurrency": users,
                               "ttft_ms": 1500, "tpot_ms": 60})

    monkeypatch.setenv("QUANTPLAN_FORK", "0")  # the calls counted are this process's: all of them here
    steps = []
    step_models = space_module.step_models
    monkeypatch.setattr(space_module, "step_models", lambda *a: steps.append(1) or step_models(*a))
    build_space(world, scenario(40), world.with_prices({}))
    assert steps
    asked = len(steps)
    assert space_module.useful_batches(scenario(70)) != space_module.useful_batches(scenario(40))
    again = build_space(world, scenario(70), world.with_prices({}))
    assert len(steps) == asked  # no step model asked again
    _forget_kept_spaces()
    fresh = build_space(world, scenario(70), world.with_prices({}))
    assert len(steps) == 2 * asked
    assert _described(again) == _described(fresh)


def test_option_records_are_built_when_read_and_read_as_dicts(world):
    """An option's memory and performance records are built on first read (a plan reads a few of the space's
    options); they compare, print and answer `in` as the dicts they stand for, and pruning's figures equal them."""
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["l4"], "max_gpus": 1, "methods": ["awq-int4"],
                              "classes": CLASSES, "alternatives": False})
    option = next(o for o in build_space(world, scenario, world.with_prices({})).options if len(o.performance) == 2)
    assert not option.performance._built and not option.memory._built
    assert "chat" in option.performance and "nope" not in option.performance
    assert not option.performance._built  # `in` builds nothing
    names = [k["name"] for k in CLASSES]
    capacity, tpot = served_figures([option], names)
    for column, name in enumerate(names):
        assert capacity[0, column] == (option.performance[name].capacity if name in option.performance else 0.0)
    assert tpot[0] == round(sum(option.performance[n].tpot_ms for n in option.performance) / 2, 6)
    as_dicts = {n: option.performance[n] for n in option.performance}, {n: option.memory[n] for n in option.memory}
    assert option.performance == as_dicts[0] and as_dicts[1] == option.memory
    assert repr(option.performance) == repr(as_dicts[0]) and repr(option.memory) == repr(as_dicts[1])
    assert option.memory["chat"].used_per_gpu > 0


def test_a_plugin_dropped_during_a_build_is_not_reused_from_it(monkeypatch):
    """A space built while a plugin answered junk (and was dropped part way) is not handed out again: the
    next build of the same scenario starts afresh, and equals the space of a world without that plugin."""
    from quantplan.solver import space as space_module

    builds = []
    build = space_module._build
    monkeypatch.setattr(space_module, "_build", lambda *a: builds.append(1) or build(*a))
    plugins = make_plugin_set(extra=[NegativeMemory()], entry_points=False, strict=False)
    world = build_world(plugins)
    _, scenario, _ = _space([])
    build_space(world, scenario, world.with_prices({}))
    assert plugins.dropped == 1 and len(builds) == 2
    again = build_space(world, scenario, world.with_prices({}))  # the same world, the same scenario
    assert len(builds) == 3
    _, _, plain = _space([])
    assert _described(again) == _described(plain)
    take_failures()


def test_a_class_a_configuration_cannot_serve_on_quality_gets_no_step_model(world, monkeypatch):
    """A class whose quality floor INT4 fails: no step model is asked for it on INT4 configurations (no option
    could serve it there), yet they count in its diagnostics (they fit; the quality bound names them)."""
    from quantplan.solver import space as space_module

    asked = []
    step_models = space_module.step_models
    monkeypatch.setattr(space_module, "step_models",
                        lambda w, c, pairs: asked.extend((c.method.id, p) for p, _ in pairs) or step_models(w, c, pairs))
    strict = {"name": "strict", "prompt_tokens": 777, "output_tokens": 77, "concurrency": 4, "max_ppl_delta": 0.001}
    loose = {"name": "loose", "prompt_tokens": 512, "output_tokens": 128, "concurrency": 4}
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["l40s"], "max_gpus": 1,
                              "methods": ["fp16", "awq-int4"], "classes": [strict, loose], "alternatives": False})
    _forget_kept_spaces()
    space = build_space(world, scenario, world.with_prices({}))
    assert ("awq-int4", 512) in asked and ("fp16", 777) in asked
    assert ("awq-int4", 777) not in asked
    diagnostics = space.per_class["strict"]
    assert diagnostics.fits > diagnostics.meets_quality > 0  # INT4 fits but misses the floor
    assert "max_ppl_delta" in diagnostics.best_quality.what  # the nearest miss is named
    assert all(o.config.method.id == "fp16" for o in space.options if "strict" in o.performance)


def test_built_in_plugins_are_asked_for_every_class_at_once(world, monkeypatch):
    """With only built-in plugins, a configuration's memory at batch 1 (every context), its memory over the batch
    sizes (every class) and its step probes (every class's lengths) are one call each, not one per class."""
    asked = []
    call_for = world.plugins.call_for

    def counted(hook, config, **kwargs):
        asked.append((hook, config.key.rsplit("/b", 1)[0], hasattr(config.batch, "shape"),
                      kwargs.get("step").phase if "step" in kwargs else ""))
        return call_for(hook, config, **kwargs)

    monkeypatch.setattr(world.plugins, "call_for", counted)
    _forget_kept_spaces()
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["l4", "h100-sxm"], "max_gpus": 2,
                              "methods": ["bf16", "fp8", "awq-int4"], "kv_cache_dtypes": ["fp16"],
                              "classes": CLASSES, "alternatives": False})
    space = build_space(world, scenario, world.with_prices({}))
    assert len({o.config.key.rsplit("/b", 1)[0] for o in space.options}) >= 6
    for kind in (("quantplan_memory_terms", False, ""), ("quantplan_memory_terms", True, ""),
                 ("quantplan_step_terms", False, "decode"), ("quantplan_step_terms", False, "prefill")):
        keys = [key for hook, key, array, phase in asked if (hook, array, phase) == kind]
        assert keys and len(keys) == len(set(keys)), kind  # once per configuration, whatever the classes
    _forget_kept_spaces()


def test_asked_together_the_figures_are_those_asked_apart(world):
    """estimator.memories and stepmodel.step_models (one call for several contexts or lengths) give the records
    that one call per context or per pair of lengths gives, to the bit: dense, tensor-parallel, MoE and
    offloaded configurations, a batch and an array of batch sizes."""
    import numpy as np

    from quantplan.solver.candidates import Config
    from quantplan.solver.estimator import memories, memory
    from quantplan.solver.space import execution_of
    from quantplan.solver.stepmodel import step_model, step_models

    cases = [("llama-3.1-70b", "fp8", "h100-sxm", "vllm", "fp8", 2, 1.0),
             ("qwen3-235b-a22b", "fp8", "h100-sxm", "tensorrt-llm", "fp8", 4, 1.0),
             ("llama-3.1-8b", "awq-int4", "l4", "sglang", "fp16", 1, 1.0),
             ("llama-3.1-70b", "gguf-q4_k_m", "rtx-4090", "llama.cpp", "fp16", 1, 0.5)]
    contexts, lengths = [1, 640, 4200, 640], [(512, 128), (4000, 200), (128, 2048)]
    for model, method, gpu, framework, kv, gpus, fraction in cases:
        parts = (world.models.get(model), world.methods.get(method), world.gpus.get(gpu),
                 world.frameworks.get(framework))
        execution = execution_of(world, parts[1], parts[2], parts[3])
        config = Config(*parts, world.kv_caches.get(kv), gpus, execution, gpu_layer_fraction=fraction)
        for batch in (1, np.array([1.0, 8.0, 64.0])):
            sized = config.with_batch(batch)
            together = memories(world, sized, contexts)
            assert _same(together, [memory(world, sized, c) for c in contexts]), (config.key, batch)
        assert _same(step_models(world, config, lengths), [step_model(world, config, *p) for p in lengths])


def _same(records: list, expected: list) -> bool:
    """Every field of every record equal to the bit (arrays element by element; a NumPy scalar equals a float)."""
    import numpy as np

    return len(records) == len(expected) and all(
        np.array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
        and np.shape(getattr(a, name)) == np.shape(getattr(b, name))
        for a, b in zip(records, expected) for name in a.__dataclass_fields__)
