"""The candidate space: compatible configurations that fit, with their figures for every traffic class."""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

import numpy as np

from . import collection, errorbars, forked
from . import terms as q
from .candidates import Config, Execution
from .estimator import Memory, Quality, cost_terms, memories, memory, quality
from .gates import gate
from .loads import Figures, Job
from .registry import World
from .scenario import Scenario, TrafficClass
from .serving import Performance, Timing, engine_scheduling, kv_capacity_tokens
from .stepmodel import step_models
from .specs import ModelSpec

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)


@dataclass
class Option:
    """A candidate the integer program may pick: a configuration at one batch size."""

    config: Config
    cost_per_hour: float
    quality: Quality
    memory: dict[str, Memory]  # by class name
    performance: dict[str, Performance]  # classes it can serve (SLOs and quality floor met)
    timings: dict[str, Timing] = field(default_factory=dict)  # step times behind the figures, by class
    margin: str = "none"  # the validation error the figures were made pessimistic by
    extrapolated: bool = False  # outside the validation data (framework x device class, GPUs per replica)
    quality_bounds: dict[str, tuple[str, float]] = field(default_factory=dict)  # by class: tightest bound, headroom
    owner: str = ""  # in a fleet: the model whose classes it serves (keys stay unique across models)

    @property
    def key(self) -> str:
        """The configuration's key, after the owner's in a fleet: made once per option (the programs read it for
        every option, many times), kept beside the fields as Config.key is."""
        found = self.__dict__.get("_key")
        if found is None:
            found = self.__dict__["_key"] = f"{self.owner}:{self.config.key}" if self.owner else self.config.key
        return found

    def but(self, **changes) -> Option:
        """A copy with `changes` (dataclasses.replace without re-running __init__: a price sweep re-prices every
        option of a space at each point)."""
        copy = object.__new__(Option)
        copy.__dict__.update(self.__dict__)
        if changes.keys() - {"cost_per_hour"}:  # pruning's price-free figures (api._compared) no longer hold
            copy.__dict__.pop("_compared", None)
            copy.__dict__.pop("_key", None)
        copy.__dict__.update(changes)
        return copy

    def repriced(self, cost_per_hour: float) -> Option:
        """but(cost_per_hour=...) in one step: a price sweep re-prices every option of a space at each point."""
        copy = object.__new__(Option)
        copy.__dict__ = {**self.__dict__, "cost_per_hour": cost_per_hour}
        return copy


@dataclass
class Best:
    value: float = math.inf
    what: str = ""

    def offer(self, value: float, what: str) -> None:
        if value < self.value or (value == self.value and what < self.what):
            self.value, self.what = value, what


@dataclass
class ClassDiagnostics:
    """Why candidates were dropped for one class: the best each constraint alone allows."""

    fits: int = 0
    best_ttft: Best = field(default_factory=Best)
    best_tpot: Best = field(default_factory=Best)
    best_ttft_meeting_tpot: Best = field(default_factory=Best)
    best_ppl: Best = field(default_factory=Best)
    best_quality: Best = field(default_factory=Best)  # least shortfall of headroom on the class's gate
    meets_quality: int = 0  # fitting configurations that pass the class's quality gate
    smallest_memory: Best = field(default_factory=Best)


@dataclass
class Space:
    model: ModelSpec
    options: list[Option]
    incompatible: Counter
    per_class: dict[str, ClassDiagnostics]
    configurations: int = 0


def resolve_model(world: World, scenario: Scenario) -> ModelSpec:
    if scenario.model_config_path:
        from .shapes import model_from_config

        return model_from_config(scenario.model_config_path)
    return world.models.get(scenario.model)


def quality_limit(world: World, traffic: TrafficClass) -> float | None:
    """The class's perplexity ceiling (a use case's or max_ppl_delta); its whole gate: gates.gate."""
    return gate(world, traffic).ppl_ceiling


def execution_of(world: World, method, gpu, framework) -> Execution:
    """How `framework` runs `method` on `gpu` (its plugin's answer), with a reason when it cannot."""
    execution = world.plugins.call("quantplan_execution", method=method, gpu=gpu, framework=framework)
    return execution or Execution(reason=f"no plugin says how {framework.id} runs {method.id}")


def objections(world: World, config: Config) -> list[str]:
    """Every plugin's reasons `config` cannot run; empty when none objects."""
    return [reason for found in world.plugins.call_for("quantplan_incompatibility", config) for reason in found]


def candidate_devices(world: World, scenario: Scenario) -> list[str]:
    """Device ids a scenario considers: those it names, else every rentable one plus owned ones it counts."""
    if scenario.gpus:
        return [world.gpus.get(n).id for n in scenario.gpus]
    counted = {world.gpus.get(n).id for n in (*scenario.gpu_count, *scenario.owned)}
    return [g.id for g in world.gpus if g.rentable or g.id in counted]  # owned devices only when named


def configurations(world: World, scenario: Scenario, model: ModelSpec, incompatible: Counter):
    """Compatible (device, method, framework, GPUs, KV) configurations at batch 1, in a fixed order."""
    pick = lambda registry, names: [registry.get(n) for n in names] if names else list(registry)  # noqa: E731
    gpus = [world.gpus.get(g) for g in candidate_devices(world, scenario)]
    if scenario.gpu_class != "all":
        gpus = [g for g in gpus if gpu_class_of(g) == scenario.gpu_class]
    methods = pick(world.methods, scenario.methods)
    frameworks, kv_caches = pick(world.frameworks, scenario.frameworks), pick(world.kv_caches, scenario.kv_cache_dtypes)
    allowed = {kv.id for kv in kv_caches}
    kv_caches = _distinct_kv(world, kv_caches)
    for gpu in gpus:
        for framework in frameworks:
            for method in methods:
                execution = execution_of(world, method, gpu, framework)
                if not execution.possible:
                    incompatible[execution.reason] += 1
                    continue
                for size in TENSOR_PARALLEL_SIZES:
                    if size > scenario.max_gpus:
                        continue
                    for kv in kv_caches:
                        config = Config(model, method, gpu, framework, kv, size, execution)
                        named = _as_the_engine_names_it(world, config, allowed)
                        reasons = objections(world, named)
                        if named is not config and reasons:  # the engine's name does not run here
                            reasons = objections(world, config)
                        else:
                            config = named
                        if reasons:
                            incompatible[reasons[0]] += 1
                            continue
                        yield config


def gpu_class_of(gpu) -> str:
    """`--gpu-class` groups: data-center parts (and server CPUs) against consumer GPUs and Apple laptops."""
    return "consumer" if gpu.device_class in ("consumer", "apple") else "datacenter"


def _distinct_kv(world: World, kv_caches: list) -> list:
    """Drop a KV format identical in size and quality to one that runs on at least as many devices
    (bf16 next to fp16): every figure would repeat. Order of the result: as given."""
    kept, seen = set(), set()
    for kv in sorted(kv_caches, key=lambda k: (k.min_compute_capability or 0.0, k.id)):
        signature = _kv_signature(world, kv)
        if signature not in seen:
            seen.add(signature)
            kept.add(kv.id)
    return [kv for kv in kv_caches if kv.id in kept]


def _kv_signature(world: World, kv) -> tuple:
    """What a KV format changes in a plan: its bytes and its quality (formats with equal ones give equal figures)."""
    point = world.quality.kv.get(kv.id)
    return kv.bytes_per_element, point.relative_ppl_increase if point else kv.id


def _as_the_engine_names_it(world: World, config: Config, allowed: set[str]) -> Config:
    """The same configuration with the KV format the engine runs by default for the method, where that format
    has the same bytes and quality as the one asked for: vLLM's and SGLang's `auto` keeps a bf16 KV cache for
    a bf16 checkpoint, which `_distinct_kv` folds into fp16 (same figures). A plan then names what runs."""
    defaults = config.framework.kv_cache_default
    name = defaults.get(config.method.id, defaults.get("*"))
    if not name or name == config.kv.id or name not in world.kv_caches or world.kv_caches.get(name).id not in allowed:
        return config
    default = world.kv_caches.get(name)
    return replace(config, kv=default) if _kv_signature(world, default) == _kv_signature(world, config.kv) else config


def hybrid_fraction(world: World, config: Config, context_tokens: int) -> float:
    """Largest share of layers that fits on the GPU when the rest goes to host RAM (llama.cpp -ngl)."""
    full = memory(world, replace(config, gpu_layer_fraction=0.999999), context_tokens)
    none = memory(world, replace(config, gpu_layer_fraction=0.0), context_tokens)
    per_layer_share = full.used_per_gpu - none.used_per_gpu
    room = none.available_per_gpu - none.used_per_gpu
    if per_layer_share <= 0 or room <= 0:
        return 0.0
    layers = math.floor(min(room / per_layer_share, 1.0) * config.model.layers)
    return min(layers, config.model.layers - 1) / config.model.layers


def build_space(world: World, scenario: Scenario, prices: dict) -> Space:
    """Every configuration's options in three passes: per configuration the plugin calls (cost, memory,
    quality, step model and scheduler per class); per class the load models for all configurations at
    once (solver/loads.py); per configuration again, the options and the diagnostics, in a fixed order.

    The last space built is kept: asked again with only other prices (a price sweep, a price x load map's
    points at one load), it is re-priced (one cost call per configuration) instead of rebuilt."""
    with collection.paused():
        return _build_space(world, scenario, prices)


def _build_space(world: World, scenario: Scenario, prices: dict) -> Space:
    model = resolve_model(world, scenario)
    key = (model.model_dump_json(), scenario.model_dump_json(exclude=_PRICE_ONLY), world.plugins.dropped)
    kept = _LAST_SPACE if _LAST_SPACE.get("world") is world and _LAST_SPACE.get("key") == key else None
    if kept is None:
        listed, incompatible = _configurations(world, scenario, model)
    else:
        listed, incompatible = kept["configurations"], Counter(kept["incompatible"])
    before_prices = Counter(incompatible)
    costs = _costs(world, listed, prices)
    if kept is not None and [c is None for c in costs] == kept["unpriced"]:
        return _repriced(kept, costs)
    space, sources = _build(world, scenario, model, listed, costs, incompatible)
    _LAST_SPACE.clear()
    _LAST_SPACE.update(world=world, key=key, configurations=listed, incompatible=before_prices,
                       unpriced=[c is None for c in costs], space=space, sources=sources, costs=costs)
    return replace(space, options=list(space.options), incompatible=Counter(space.incompatible))


def _configurations(world: World, scenario: Scenario, model: ModelSpec) -> tuple[list[Config], Counter]:
    """configurations() as a list with its reasons, kept for the next space with the same choices (a sweep
    over loads, SLOs or quality floors lists the same configurations)."""
    key = (model.model_dump_json(), scenario.model_dump_json(include=_CHOICES), world.plugins.dropped)
    if _LAST_CONFIGURATIONS.get("world") is not world or _LAST_CONFIGURATIONS.get("key") != key:
        incompatible: Counter = Counter()
        listed = list(configurations(world, scenario, model, incompatible))
        _LAST_CONFIGURATIONS.update(world=world, key=key, listed=listed, incompatible=incompatible)
    return list(_LAST_CONFIGURATIONS["listed"]), Counter(_LAST_CONFIGURATIONS["incompatible"])


# What configurations() reads of a scenario.
_CHOICES = {"gpus", "methods", "frameworks", "kv_cache_dtypes", "max_gpus", "gpu_class", "gpu_count", "owned"}
_LAST_CONFIGURATIONS: dict = {}

# What a scenario holds that does not change the candidate space, or changes only its prices.
_PRICE_ONLY = {"prices", "alternatives", "objective", "max_configurations", "time_limit_s", "solver", "write_lp",
               "max_cost_per_hour"}
_LAST_SPACE: dict = {}


def _costs(world: World, listed: list[Config], prices: dict) -> list[float | None]:
    """_cost of every configuration. The built-in cost terms are the device's price times the GPUs per replica
    (plugins/builtin/devices.py), so a configuration that only built-in plugins price costs what another on the
    same device with as many GPUs costs: asked once per such pair (a price sweep re-prices every point)."""
    found, same = [], {}
    for config in listed:
        if not world.plugins.built_in_only("quantplan_cost_terms", config):
            found.append(_cost(world, config, prices))
            continue
        pair = (config.gpu.id, config.gpus)
        if pair not in same:
            same[pair] = _cost(world, config, prices)
        found.append(same[pair])
    return found


def _cost(world: World, config: Config, prices: dict) -> float | None:
    """A configuration's price per replica-hour; None where its device has no price."""
    found = cost_terms(world, config, prices)
    if not any(t.quantity == q.COST for t in found):
        return None
    return sum(t.value for t in found if t.quantity == q.COST)


def _repriced(kept: dict, costs: list) -> Space:
    """The kept space with every option at its configuration's new price (the same options otherwise)."""
    space = kept["space"]
    if costs == kept["costs"]:
        options = list(space.options)
    else:
        options = [o.repriced(costs[s]) for o, s in zip(space.options, kept["sources"])]
    return replace(space, options=options, incompatible=Counter(space.incompatible))


def _build(world: World, scenario: Scenario, model: ModelSpec, listed: list[Config], costs: list,
           incompatible: Counter) -> tuple[Space, list[int]]:
    """The space of the configurations `listed` at `costs` (None: unpriced), and for every option the index
    of its configuration in `listed`."""
    limits = {c.name: gate(world, c) for c in scenario.classes}
    per_class = {c.name: ClassDiagnostics() for c in scenario.classes}
    batches = useful_batches(scenario)
    made_at = _first_pass_batches(batches)  # a sweep's union of its points' sizes, or these
    keep = None if made_at == batches else np.searchsorted(made_at, batches)
    count = 0
    prepared: list[Prepared] = []
    wholes: list[Prepared] = []  # the same configurations' first passes at every size they were made at
    origins: list[int] = []
    reuse, probes, qualities = _first_pass_cache(world, scenario, model, made_at, limits)
    kept = _FIRST_PASS  # what the points of a sweep that share these first passes share besides them
    _first_passes(world, scenario, model, made_at, limits, reuse, probes, qualities,
                  [config for config, cost in zip(listed, costs) if cost is not None])
    for index, (config, cost) in enumerate(zip(listed, costs)):
        if cost is None:  # an unpriced device is no configuration at all
            if scenario.provider:
                incompatible[f"{config.gpu.id} is not offered by provider {scenario.provider}: give "
                             f"--price {config.gpu.id}=USD to plan it"] += 1
            else:
                incompatible[f"no price for {config.gpu.id}: give --price {config.gpu.id}=USD"] += 1
            continue
        count += 1
        entry, events = reuse[config.key, config.execution]  # every priced configuration's, made just above
        for kind, name, value, what in events:  # the diagnostics the first pass left, replayed
            if kind == "smallest":
                per_class[name].smallest_memory.offer(value, what)
            else:
                incompatible[what] += 1
        if entry is not None:
            wholes.append(entry)
            if keep is not None:
                entry = _narrowed(entry, keep, batches, len(made_at))
            prepared.append(replace(entry, cost=cost))
            origins.append(index)
    figures, offsets = {}, {}
    for traffic in scenario.classes:
        name = traffic.name
        if keep is not None and traffic.load_kind == "concurrency":
            # a sweep's point, its sizes cut from the first passes' (`keep`): a closed loop's figures read neither
            # the number of users nor the other sizes asked for, so they are made once at every size for the points
            # that share the first passes, and each point reads its own sizes out of them (`offsets`)
            figures[name] = _whole_figures(kept, traffic, [w.jobs[name] for w in wholes if name in w.jobs])
            offsets[name] = keep.tolist()
        else:
            figures[name] = Figures(traffic, [p.jobs[name] for p in prepared if name in p.jobs])
            offsets[name] = None
    made = kept.setdefault("options", {}) if keep is not None else None
    if made is not None and len(made) >= OPTIONS_KEPT:
        made.clear()
    positions = {name: 0 for name in figures}  # the next job of each class
    options: list[Option] = []
    sources: list[int] = []
    for entry, whole, origin in zip(prepared, wholes, origins):
        evaluated = {}
        for name in entry.jobs:
            evaluated[name] = (figures[name], positions[name], offsets[name])
            positions[name] += 1
        found = _options(entry, batches, scenario.classes, limits, evaluated, per_class, made, whole)
        options += found
        sources += [origin] * len(found)
    return Space(model, options, incompatible, per_class, count), sources


def _whole_figures(kept: dict, traffic: TrafficClass, jobs: list[Job]) -> Figures:
    """The closed-loop class's figures over `jobs` (first passes at every size they were made at), made once for the
    points of a sweep that share those first passes and read the class alike: everything of it but its number of
    users, which a closed loop's figures do not read (its clients are the batch size). Kept with the first passes
    (`kept`), so they go when those go."""
    made = kept.setdefault("figures", {})
    key = (traffic.model_dump_json(exclude={"concurrency"}), tuple(map(id, jobs)))
    found = made.get(key)
    if found is None:
        if len(made) >= WHOLE_FIGURES_KEPT:
            made.clear()
        found = made[key] = (Figures(traffic, jobs), jobs)  # the jobs kept with them: their ids stay theirs
    return found[0]


WHOLE_FIGURES_KEPT = 8  # classes' whole figures kept for a sweep's points (a sweep of a few classes needs a few)
OPTIONS_KEPT = 400_000  # options kept for a sweep's points (the full catalog's largest point makes about 25,000)


def _first_passes(world: World, scenario: Scenario, model: ModelSpec, batches, limits: dict, reuse: dict,
                  probes: dict, qualities: dict, priced: list[Config]) -> None:
    """The first pass of every priced configuration not in `reuse` yet, shared out to forked children where more
    CPUs are free (solver/forked.py): the plugin calls are most of a candidate space's time."""
    todo = list({(config.key, config.execution): config for config in priced
                 if (config.key, config.execution) not in reuse}.values())

    def first(config: Config):
        key = (config.key, config.execution)
        entry, events = _first_pass(world, scenario, config, batches, qualities, probes, limits)
        return key, entry, events, probes.get(key)

    known = [world, world.plugins, model, scenario, *priced,
             *(record for registry in (world.gpus, world.methods, world.kv_caches, world.frameworks, world.models)
               for record in registry)]
    for key, entry, events, probe in forked.spread(first, todo, known, lambda: world.plugins.dropped):
        reuse[key] = (entry, events)
        if probe is not None:
            probes.setdefault(key, probe)


_FIRST_PASS: dict = {}  # the last space's first pass, by configuration (see _first_pass_cache)
_BATCH_HINT: frozenset = frozenset()  # batch sizes the coming spaces will ask for (expected_batches)


@contextmanager
def expected_batches(sizes):
    """Tell the spaces built inside the block which batch sizes they will ask for between them (a concurrency
    sweep's points each cut the sizes at their own number of users, so each would miss the last point's first
    pass): first passes are made once over all of them, and each space takes its own sizes out of them."""
    global _BATCH_HINT
    before, _BATCH_HINT = _BATCH_HINT, frozenset(int(size) for size in sizes)
    try:
        yield
    finally:
        _BATCH_HINT = before


def _first_pass_batches(batches: list[int]) -> list[int]:
    """The batch sizes to make first passes at: the expected sizes where they hold `batches` and start where
    they do (a first pass's diagnostics are taken at its smallest size), else `batches`."""
    if _BATCH_HINT and _BATCH_HINT.issuperset(batches) and min(_BATCH_HINT) == batches[0]:
        return sorted(_BATCH_HINT)
    return list(batches)


def _narrowed(entry: Prepared, keep: np.ndarray, batches: list[int], made: int) -> Prepared:
    """A first pass made over `made` batch sizes, cut to `batches` (at positions `keep` of them): memory arrays
    sliced, each class's sizes up to the first that does not fit (memory grows with batch, so they are those the
    first pass would have kept at `batches` alone). Elementwise figures: the same bits. A class's memory figures
    are cut when first read (_NarrowedMemories: a sweep's point reads them only for the options it makes anew)."""
    memories = _NarrowedMemories(entry.memories, keep, made)
    jobs = {}
    for name, job in entry.jobs.items():
        whole = _fits(entry, name)  # elementwise: the sizes `keep` of it are the cut figures' own answers
        fits = np.atleast_1d(whole[keep] if type(whole) is np.ndarray and whole.shape == (made,)
                             else memories[name].fits)
        leading = len(fits) if fits.all() else int(np.argmin(fits))
        jobs[name] = Job(job.config, job.times, tuple(batches[:leading]))
    found = copy.copy(entry)
    found.memories, found.jobs = memories, jobs
    return found


def _fits(entry: Prepared, name: str):
    """Memory.fits of the class's first-pass figures, kept with the first pass (a sweep's points all ask)."""
    kept = entry.__dict__.setdefault("_fits", {})
    found = kept.get(name)
    if found is None:
        found = kept[name] = entry.memories[name].fits
    return found


class _NarrowedMemories(Mapping):
    """A first pass's memory figures by class (`whole`, over `made` batch sizes), each cut to the sizes `keep` when
    first read (_memory_at)."""

    def __init__(self, whole: dict[str, Memory], keep: np.ndarray, made: int) -> None:
        self.whole, self.keep, self.made, self.cut = whole, keep, made, {}

    def __getitem__(self, name: str) -> Memory:
        found = self.cut.get(name)
        if found is None:
            found = self.cut[name] = _memory_at(self.whole[name], self.keep, self.made)
        return found

    def __iter__(self):
        return iter(self.whole)

    def __len__(self) -> int:
        return len(self.whole)


def _memory_at(used: Memory, keep: np.ndarray, made: int) -> Memory:
    """`used` (figures over `made` batch sizes, or constants) at the sizes `keep`."""
    return Memory(**{name: value[keep] if type(value) is np.ndarray and value.shape == (made,) else value
                     for name, value in used.__dict__.items()})


def _first_pass_cache(world: World, scenario: Scenario, model: ModelSpec, batches: list[int], limits: dict) -> tuple:
    """(entries, probes, qualities) of the last candidate space built with the same world, model, class names
    and lengths and margin. What the plugins said does not depend on loads, SLOs, quality floors or prices
    (cost is asked anew), so a sweep over those asks the plugins once per process. `probes` (placement,
    quality, step models and schedulers by configuration) do not depend on the batch sizes either: a sweep
    over concurrency, which changes them, asks the plugins again for memory at the new sizes only.
    `entries`: the whole first pass by configuration, for these batch sizes and quality gates (`limits`: a
    class a configuration's quality fails needs no step model or load model there)."""
    global _FIRST_PASS
    shape = (model.model_dump_json(), tuple((k.name, k.prompt_tokens, k.output_tokens, k.context_tokens)
                                            for k in scenario.classes), scenario.margin, world.plugins.dropped)
    if _FIRST_PASS.get("world") is not world or _FIRST_PASS.get("shape") != shape:
        _FIRST_PASS = {"world": world, "shape": shape, "probes": {}, "qualities": {}}
    if _FIRST_PASS.get("batches") != (tuple(batches), limits):
        _FIRST_PASS.update(batches=(tuple(batches), limits), entries={}, figures={}, options={})
    return _FIRST_PASS["entries"], _FIRST_PASS["probes"], _FIRST_PASS["qualities"]


@dataclass
class Probe:
    """What the plugins say about one configuration whatever the batch size: where it is placed (None: it does
    not fit at batch 1, or has no quality data), memory at batch 1, quality, and each class's step model and
    scheduler (filled as classes ask for them)."""

    placed: Config | None
    at_batch_one: AtBatchOne | None
    assessed: Quality | None
    events: list  # the diagnostics a configuration that is no candidate leaves
    timings: dict = field(default_factory=dict)  # by class name


def _probe(world: World, scenario: Scenario, config: Config, qualities: dict) -> Probe:
    # what the classes ask of memory at batch 1: placement, KV capacity (serving.kv_capacity_tokens), diagnostics
    at_batch_one = AtBatchOne(world, config).ask([1, *(traffic.context_tokens for traffic in scenario.classes)])
    placed = fit_placement(world, config, scenario.classes, at_batch_one)
    if placed is None:
        return Probe(None, None, None, [("smallest", traffic.name,
                                         at_batch_one(traffic.context_tokens).used_per_gpu / 1e9, _describe(config))
                                        for traffic in scenario.classes])
    # quality does not depend on GPUs per replica or batch: assess once per the rest
    key = (config.gpu.id, config.method.id, config.framework.id, config.kv.id, config.execution)
    assessed = qualities.get(key) or qualities.setdefault(key, quality(world, config))
    if not math.isfinite(assessed.relative):
        return Probe(None, None, None, [("incompatible", "", 0.0,
                                         f"no quality data for {config.method.id} / {config.kv.id}")])
    return Probe(placed, at_batch_one if placed is config else AtBatchOne(world, placed), assessed, [])


def _first_pass(world: World, scenario: Scenario, config: Config, batches, qualities: dict, probes: dict,
                limits: dict | None = None):
    """(Prepared or None, the diagnostics it leaves as events) for one priced configuration."""
    key = (config.key, config.execution)
    probe = probes.get(key) or probes.setdefault(key, _probe(world, scenario, config, qualities))
    if probe.placed is None:
        return None, list(probe.events)
    per_class = {c.name: ClassDiagnostics() for c in scenario.classes}
    entry = _prepare(world, probe.placed, batches, scenario.classes, 0.0, probe.assessed, per_class, scenario.margin,
                     probe.at_batch_one, probe.timings, limits)
    events = [("smallest", name, d.smallest_memory.value, d.smallest_memory.what)
              for name, d in per_class.items() if d.smallest_memory.what]
    return entry, events


def useful_batches(scenario: Scenario) -> list[int]:
    """Batch sizes worth trying. With only concurrency classes, a batch above the total number of
    users never needs fewer replicas, so sizes stop there (the class sizes themselves are added)."""
    users = [c.users for c in scenario.classes if c.load_kind == "concurrency"]
    sizes = set(scenario.batch_sizes) | set(users)
    if len(users) == len(scenario.classes):
        sizes = {b for b in sizes if b <= sum(users)}
    return sorted(sizes)


class AtBatchOne:
    """memory(world, config at batch 1, context) by context: what every class of a configuration asks
    (placement, KV capacity, the smallest need), asked of the plugins once per context."""

    def __init__(self, world: World, config: Config) -> None:
        self.world, self.config, self.found = world, config.with_batch(1), {}

    def __call__(self, context_tokens: int) -> Memory:
        found = self.found.get(context_tokens)
        if found is None:
            found = self.found[context_tokens] = memory(self.world, self.config, context_tokens)
        return found

    def ask(self, contexts) -> AtBatchOne:
        """Memory at every context of `contexts` not asked yet, in one call to the plugins (estimator.memories)."""
        missing = sorted({c for c in contexts if c not in self.found})
        self.found.update(zip(missing, memories(self.world, self.config, missing)))
        return self


def fit_placement(world: World, config: Config, classes, at_batch_one: AtBatchOne | None = None) -> Config | None:
    """The config at batch 1, offloaded to host RAM if llama.cpp needs that to fit; None if nothing fits.
    `at_batch_one`: the memory cache of `config` (which is at batch 1), when the caller keeps one."""
    context = min(c.context_tokens for c in classes)
    if (at_batch_one(context) if at_batch_one else memory(world, config, context)).fits:
        return config
    if config.framework.hybrid_offload and config.gpu.kind == "gpu" and config.gpus == 1:
        fraction = hybrid_fraction(world, config, context)
        if fraction > 0:
            hybrid = replace(config, gpu_layer_fraction=fraction)
            if memory(world, hybrid, context).fits:
                return hybrid
    return None


@dataclass
class Prepared:
    """A configuration at every batch size, before the load models: what its plugins said."""

    config: Config
    cost: float
    assessed: Quality
    outside: bool
    applied: str  # the margin its figures are planned at
    memories: dict[str, Memory]  # by class: arrays over the batch sizes
    jobs: dict[str, Job]  # by class with at least one fitting batch size: the load models' work
    failing: set[str] = field(default_factory=set)  # classes that fit but whose quality gate fails (no job)


def _prepare(world, config, batches, classes, cost, assessed, per_class, margin="none",
             at_batch_one: AtBatchOne | None = None, timings: dict | None = None,
             limits: dict | None = None) -> Prepared:
    """Memory (numpy arrays over the batch sizes, through the plugin terms) and, per class that fits at
    some batch size, the step model and scheduler the load models need. What does not depend on the
    class is asked of the plugins once: the engine's scheduler, memory at batch 1 by context
    (`at_batch_one`, the cache of `config`), step models by (prompt, output) lengths. `timings`: each
    class's step model and scheduler at `margin` from an earlier call for `config` (filled here). `limits`:
    the classes' quality gates, where known: a class whose gate `assessed` fails gets no step model or load
    model (only that it fits, for the diagnostics)."""
    sizes = np.array(batches, dtype=float)
    vector = config.with_batch(sizes)
    outside = outside_coverage(config)  # one answer for every batch size and class of this configuration
    # auto: p90 outside the validation data (an unmeasured combination cannot win on an optimistic guess)
    applied = ("p90" if outside else "none") if margin == "auto" else margin
    at_batch_one = at_batch_one or AtBatchOne(world, config)
    held = dict(zip([traffic.name for traffic in classes],
                    memories(world, vector, [traffic.context_tokens for traffic in classes])))
    served: dict[str, int] = {}  # classes that get figures: batch sizes that fit, up to the first that does not
    failing: set[str] = set()
    for traffic in classes:
        used = held[traffic.name]
        fits = np.atleast_1d(used.fits)
        if not fits[0]:
            per_class[traffic.name].smallest_memory.offer(float(np.atleast_1d(used.used_per_gpu)[0]) / 1e9,
                                                          _describe(config.with_batch(batches[0])))
        leading = len(fits) if fits.all() else int(np.argmin(fits))
        if not leading:
            continue
        if limits is not None and not limits[traffic.name].passes(assessed):
            failing.add(traffic.name)  # it fits, but no option can serve this class: no figures needed
            continue
        served[traffic.name] = leading
    known = timings if timings is not None else {}
    missing = [traffic for traffic in classes if traffic.name in served and traffic.name not in known]
    found = _timings(world, config, missing, applied, at_batch_one)
    if timings is not None:
        timings.update(found)
    jobs = {name: Job(config, known.get(name) or found[name], tuple(batches[:leading]))
            for name, leading in served.items()}
    return Prepared(config, cost, assessed, outside, applied, held, jobs, failing)


def _timings(world, config, classes, applied: str, at_batch_one: AtBatchOne) -> dict[str, Timing]:
    """Each class's step model (asked of the plugins for all the classes' lengths at once: stepmodel.step_models)
    and the engine's scheduler with the class's KV capacity, at the margin `applied`; by class name."""
    if not classes:
        return {}
    lengths = list(dict.fromkeys((traffic.prompt_tokens, traffic.output_tokens) for traffic in classes))
    steps = dict(zip(lengths, step_models(world, config, lengths)))
    engine = engine_scheduling(world, config)
    found = {}
    for traffic in classes:
        capacity = kv_capacity_tokens(world, config, traffic, at_batch_one)
        times = Timing(steps[traffic.prompt_tokens, traffic.output_tokens], replace(engine, kv_tokens=capacity))
        if applied != "none":  # plan against the typical (or 90th-percentile) error of this framework
            bars = errorbars.shipped()
            times = times.pessimistic(bars.factor("decode", config.framework.id, applied),
                                      bars.factor("ttft", config.framework.id, applied))
        found[traffic.name] = times
    return found


def _options(entry: Prepared, batches, classes, limits, evaluated, per_class, made: dict | None = None,
             whole: Prepared | None = None) -> list[Option]:
    """The options of one prepared configuration from its classes' load-model figures, with the diagnostics.

    Memory only grows with batch, and at a fixed per-replica concurrency so do TTFT and TPOT: once a
    concurrency class fails at some batch size, larger ones are not offered for it.
    `evaluated`: per class, its figures, this configuration's place in them and, where the figures hold every size
    the first pass was made at (_whole_figures), the place of each of `batches` among those (else None). `made`: the
    options made before from such figures for the same first pass (`whole`), taken again as they are: a sweep's
    points then share them, and with them what pruning keeps of each (api._compared).
    """
    config, assessed = entry.config, entry.assessed
    results: dict[str, list] = {}
    for traffic in classes:
        if traffic.name not in entry.jobs and traffic.name not in entry.failing:
            continue
        diagnostics = per_class[traffic.name]
        quality_gate = limits[traffic.name]
        # the quality gate does not depend on the batch size: it passes at all or at none
        diagnostics.best_ppl.offer(assessed.ppl_delta, f"{config.method.id} with {config.kv.id} KV cache")
        if not quality_gate.passes(assessed):  # the best-reachable figures only name those that pass
            diagnostics.fits += 1
            tightest = quality_gate.tightest(assessed)
            diagnostics.best_quality.offer(-tightest.headroom(assessed), f"{config.method.id} with "
                                           f"{config.kv.id} KV cache: {tightest.describe(assessed)}")
            continue
        figures, position, offsets = evaluated[traffic.name]  # the class's figures, this configuration's place
        sizes = len(entry.jobs[traffic.name].batches)  # those that fit: larger batches need more memory still
        results[traffic.name] = served = [None] * len(batches)
        rows = figures.rows()
        start = figures.element(position, 0)  # this configuration's sizes are consecutive elements
        if offsets is None:
            elements = range(start, start + sizes)
            meets = rows["meets"][start:start + sizes]
        else:  # these sizes among all those the figures hold
            elements = [start + offset for offset in offsets[:sizes]]
            meets = [rows["meets"][element] for element in elements]
        if traffic.load_kind == "concurrency" and not all(meets):
            sizes = meets.index(False) + 1  # more clients per replica only lengthen TTFT and TPOT: stop there
        ttft = [rows["ttft_stat"][element] for element in elements[:sizes]]
        tpot = [rows["tpot_stat"][element] for element in elements[:sizes]]
        diagnostics.fits += sizes
        diagnostics.meets_quality += sizes
        _offer_least(diagnostics.best_ttft, ttft, range(sizes), config, batches)
        _offer_least(diagnostics.best_tpot, tpot, range(sizes), config, batches)
        limit = traffic.tpot_limit_ms
        _offer_least(diagnostics.best_ttft_meeting_tpot, ttft,
                     range(sizes) if limit is None else [i for i in range(sizes) if tpot[i] <= limit], config, batches)
        for index in range(sizes):
            if meets[index]:
                served[index] = (figures, elements[index])
    bounds = {name: _tightest(limits[name], assessed) for name in results if limits[name].bounds}
    records = {name: _Rows(entry.memories, name, len(batches)) for name in results}
    times = {name: entry.jobs[name].times for name in results}
    found = []
    columns = list(results.items())
    for index, batch in enumerate(batches):
        served, timings, bounded = {}, {}, {}  # plain loops: this runs for every option of the space
        for name, column in columns:
            if column[index] is not None:
                served[name], timings[name] = column[index], times[name]
                if name in bounds:
                    bounded[name] = bounds[name]
        if not served:
            continue
        key = None
        if made is not None and all(evaluated[name][2] is not None for name in served):  # every one whole figures
            key = (id(whole), batch, entry.cost, tuple((name, id(pair[0]), pair[1]) for name, pair in served.items()))
            option = made.get(key)
            if option is not None:
                found.append(option)
                continue
        option = Option(config.with_batch(batch), entry.cost, assessed, _MemoryRecords(records, index, served),
                        _Performances(served), timings, margin=entry.applied, extrapolated=entry.outside,
                        quality_bounds=bounded)
        if key is not None:
            made[key] = option
        found.append(option)
    return found


MEMORY_FIELDS = tuple(f.name for f in fields(Memory))


class _Rows:
    """Memory.at for every batch size of an array evaluation (class `name`'s figures in `memories`, read when a
    first record is asked for), each record built when asked for."""

    def __init__(self, memories: Mapping, name: str, count: int) -> None:
        self.memories, self.name, self.count, self.columns, self.used = memories, name, count, None, None

    def __getitem__(self, index: int) -> Memory:
        if self.used is None:
            self.used = self.memories[self.name]
        if not np.ndim(self.used.used_per_gpu):
            return self.used
        if self.columns is None:  # the arrays as lists, once, when a first record is asked for
            self.columns = []
            for name in MEMORY_FIELDS:
                value = getattr(self.used, name)
                if name in ("gpus", "memory_divisor"):
                    self.columns.append([value] * self.count)
                elif isinstance(value, np.ndarray) and value.ndim:
                    self.columns.append(value.astype(float).tolist())
                else:
                    self.columns.append([float(value)] * self.count)
        return Memory(*[column[index] for column in self.columns])


class _LazyRecords(Mapping):
    """A per-class table of records built when first read (a plan reads a few of the tens of thousands of
    options a space holds); it compares, prints and answers `in` as the dict it stands for. `names`: the
    classes, as any container (a subclass may keep where each record comes from in it)."""

    __slots__ = ("_names", "_built")

    def __init__(self, names) -> None:
        self._names, self._built = names, {}

    def _make(self, name: str):
        raise NotImplementedError

    def __getitem__(self, name: str):
        found = self._built.get(name)
        if found is None:
            if name not in self._names:
                raise KeyError(name)
            found = self._built[name] = self._make(name)
        return found

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class _Performances(_LazyRecords):
    """Option.performance, from the load models' figures (`names`: class -> (its Figures, this option's element in
    them)); pruning reads capacity and TPOT from the same figures without building records (served_figures)."""

    __slots__ = ()

    def _make(self, name: str):
        figures, element = self._names[name]
        return figures.performance(element)


def served_figures(chosen: list[Option], names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Capacity by class and mean TPOT (ms, 6 decimals) of options straight from the candidate space: read from
    the load models' arrays (each served class's Figures and the option's element in them) without building
    records; the mean adds the classes in the order a record's table holds them, as the records would. None when
    some option's records are not the space's own (split mixes, tests): read those from the records."""
    if not all(type(o.performance) is _Performances for o in chosen):
        return None
    count = len(chosen)
    capacity, total = np.zeros((count, len(names))), np.zeros(count)
    served = np.array([len(o.performance) for o in chosen], dtype=float)
    for column, name in enumerate(names):
        by_figures: dict[int, tuple] = {}
        for row, option in enumerate(chosen):
            pair = option.performance._names.get(name)
            if pair is not None:
                found = by_figures.setdefault(id(pair[0]), (pair[0], [], []))
                found[1].append(row)
                found[2].append(pair[1])
        for figures, rows, elements in by_figures.values():
            capacity[rows, column] = figures.capacity[elements]
            total[rows] = total[rows] + figures.tpot_ms[elements]
    return capacity, np.array([round(value, 6) for value in (total / served).tolist()])


class _MemoryRecords(_LazyRecords):
    """Option.memory: each served class's Memory at batch-size index `index` of its `records`."""

    __slots__ = ("_records", "_index")

    def __init__(self, records: dict[str, _Rows], index: int, names) -> None:
        super().__init__(names)
        self._records, self._index = records, index

    def _make(self, name: str) -> Memory:
        return self._records[name][self._index]


def _offer_least(best: Best, values: list, indices, config: Config, batches) -> None:
    """_offer of values[i] at batches[i] for every i of `indices`: only the least value can win (Best keeps the
    least value, and among equal values the first description), so only its batch sizes are described."""
    least = min((values[i] for i in indices if values[i] == values[i]), default=None)  # NaN never wins
    if least is not None and least <= best.value:
        for i in indices:
            if values[i] == least:
                best.offer(least, _describe(config.with_batch(batches[i])))


def _tightest(quality_gate, assessed: Quality) -> tuple[str, float]:
    bound = quality_gate.tightest(assessed)
    return bound.describe(assessed), bound.headroom(assessed)


def outside_coverage(config: Config) -> bool:
    """No validation rows of this framework on this device class at this many GPUs per replica over this
    link between them, or a kernel with no speed measurement."""
    return not config.execution.measured or bool(
        errorbars.shipped().coverage(config.framework.id, config.gpu.device_class, 1, config.gpus, config.gpu.vendor,
                                     config.gpu.interconnect))



def _describe(config: Config) -> str:
    offload = f" ({config.gpu_layers}/{config.model.layers} layers on GPU)" if config.hybrid else ""
    return (f"{config.gpus}x {config.gpu.id} at {config.method.id}, {config.framework.id}, "
            f"batch {config.batch}, {config.kv.id} KV{offload}")


def pool(world: World, scenario: Scenario) -> tuple[dict[str, int], set[str]]:
    """Devices available (rented limits and owned counts, by device id) and the ids of owned devices."""
    availability = {world.gpus.get(name).id: count for name, count in scenario.gpu_count.items()}
    owned = {world.gpus.get(name).id: count for name, count in scenario.owned.items()}
    return {**availability, **owned}, set(owned)


def free_if_owned(options: list[Option], owned: set[str]) -> list[Option]:
    """Owned devices cost nothing by the hour: their options' price goes to zero."""
    if not owned:
        return options
    return [o.repriced(0.0) if o.config.gpu.id in owned else o for o in options]
