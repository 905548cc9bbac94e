"""Property-based tests (hypothesis): generated scenarios, catalogs and config.json files, valid and broken.

What must hold for every generated input: no traceback and an exit code in {0, 1, 2} (2 with one
`error:` line); accepted catalog rows are finite and within the plausible bounds; plans meet each
class's SLOs at its statistic and its quality floor; a plan's replicas are reproduced by `estimate`;
more load never costs less; a higher price never lowers the plan's cost (and raises it at most by the
same factor), a lower one never raises it; a faster device at the same price never costs more; the
same input gives the same plan. Derandomized (the same examples on every run) and sized for CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from quantplan.cli import main
from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.plugins.manager import make_plugin_set, take_failures
from quantplan.solver.api import estimate, solve
from quantplan.solver.errors import InfeasibleError
from quantplan.solver.registry import build_world
from quantplan.solver.specs import PLAUSIBLE_BOUNDS, GPUSpec, PriceSpec

ROOT = Path(__file__).resolve().parent.parent
MY_GPUS = tomllib.loads((ROOT / "examples" / "my-gpus.toml").read_text())


def examples(count: int):
    """Hypothesis settings for this file: derandomized, no per-example deadline (solves vary in time)."""
    return settings(max_examples=count, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def world():
    return build_world(make_plugin_set(entry_points=False))


def run_cli(argv: list[str]) -> tuple[int, list[str], str]:
    """Exit code, stderr lines and stdout of the console entry point, run in-process."""
    take_failures()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue().splitlines(), out.getvalue()


def assert_clean_exit(code: int, errors: list[str], out: str) -> None:
    """0 with output, 1 with an infeasible line, 2 with exactly one error line; never a traceback."""
    event(f"exit code {code}")
    assert code in (0, 1, 2), (code, errors)
    assert not any("Traceback" in line for line in errors), errors
    lines = [line for line in errors if not line.startswith("warning: ")]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), errors
    elif code == 1:
        assert lines and (lines[-1].startswith("infeasible: ") or out), errors
    else:
        assert out


# ---------------------------------------------------------------- generated scenarios (valid)

MODELS = ("llama-3.2-1b", "llama-3.1-8b", "qwen3-8b")
DEVICES = ("l4", "a10g", "l40s", "a100-80gb", "h100-sxm")
METHODS = ("fp16", "awq-int4", "fp8", "int8-w8a8")
FRAMEWORKS = ("vllm", "sglang")


@st.composite
def traffic_classes(draw, kind: str | None = None) -> dict:
    kind = kind or draw(st.sampled_from(("concurrency", "rate")))
    traffic = {"name": "generated",
               "prompt_tokens": draw(st.integers(32, 4096)),
               "output_tokens": draw(st.integers(16, 1024))}
    if kind == "concurrency":
        traffic["concurrency"] = draw(st.integers(1, 128))
    else:
        traffic["rate_per_s"] = draw(st.floats(0.05, 20.0))
    if draw(st.booleans()):
        traffic["ttft_ms"] = draw(st.floats(100.0, 5000.0))
    if draw(st.booleans()):
        traffic["tpot_ms"] = draw(st.floats(10.0, 200.0))
    if draw(st.booleans()):
        traffic["max_ppl_delta"] = draw(st.floats(0.02, 2.0))
    return traffic


@st.composite
def scenarios(draw, kind: str | None = None) -> dict:
    """A small but real planning problem: one class, one or two devices, a few methods and engines."""
    return {
        "model": draw(st.sampled_from(MODELS)),
        "gpus": draw(st.lists(st.sampled_from(DEVICES), min_size=1, max_size=2, unique=True)),
        "methods": draw(st.lists(st.sampled_from(METHODS), min_size=1, max_size=2, unique=True)),
        "frameworks": draw(st.lists(st.sampled_from(FRAMEWORKS), min_size=1, max_size=1)),
        "max_gpus": draw(st.sampled_from((1, 2))),
        "alternatives": False,
        "margin": "none",
        "classes": [draw(traffic_classes(kind))],
    }


def plan_or_none(scenario: dict, world):
    try:
        plan = solve(scenario, world=world)
    except InfeasibleError:
        return None
    assume(plan.status == "optimal")  # a time-limited plan proves nothing about optima
    return plan


@examples(12)
@given(scenario=scenarios())
def test_plans_meet_their_slos_and_quality_floor(scenario, world):
    plan = plan_or_none(scenario, world)
    assume(plan is not None)
    traffic = scenario["classes"][0]
    served = 0.0
    for group in plan.replicas:
        assert group.count >= 1
        if "max_ppl_delta" in traffic:
            assert group.ppl_delta <= traffic["max_ppl_delta"] * (1 + 1e-9)
        assert group.memory_gb_per_gpu <= group.memory_capacity_gb_per_gpu * (1 + 1e-9)
        for figures in group.classes:
            if "ttft_ms" in traffic:
                assert figures.ttft_at_statistic_ms <= traffic["ttft_ms"] * (1 + 1e-9)
            if "tpot_ms" in traffic:
                assert figures.tpot_at_statistic_ms <= traffic["tpot_ms"] * (1 + 1e-9)
            served += figures.load_per_replica * group.count
    demand = traffic.get("concurrency", traffic.get("rate_per_s"))
    assert served == pytest.approx(demand, rel=1e-6)
    assert plan.cost_per_hour == pytest.approx(sum(g.cost_per_hour * g.count for g in plan.replicas), rel=1e-9)


@examples(6)
@given(scenario=scenarios(kind="rate"))
def test_a_plan_round_trips_through_estimate(scenario, world):
    """Each replica group's figures are what `estimate` says for that configuration at its load."""
    plan = plan_or_none(scenario, world)
    assume(plan is not None)
    traffic = scenario["classes"][0]
    for group in plan.replicas:
        figures = group.classes[0]
        result = estimate(plan.model, group.method, group.gpu, group.framework, gpus=group.gpus_per_replica,
                          prompt_tokens=traffic["prompt_tokens"], output_tokens=traffic["output_tokens"],
                          kv_cache_dtype=group.kv_cache_dtype, rate=figures.load_per_replica,
                          max_num_seqs=group.batch_size, world=world)
        assert result.compatible and result.fits
        assert result.ttft_ms == pytest.approx(figures.ttft_ms, rel=1e-9)
        assert result.tpot_ms == pytest.approx(figures.tpot_ms, rel=1e-9)
        assert result.ttft_p90_ms == pytest.approx(figures.ttft_p90_ms, rel=1e-9)
        assert result.ppl_delta == pytest.approx(group.ppl_delta, rel=1e-9, abs=1e-12)
        assert result.cost_per_hour == pytest.approx(group.cost_per_hour, rel=1e-12)


def with_load(scenario: dict, factor: float) -> dict:
    traffic = dict(scenario["classes"][0])
    if "concurrency" in traffic:
        traffic["concurrency"] = math.ceil(traffic["concurrency"] * factor)
    else:
        traffic["rate_per_s"] *= factor
    return {**scenario, "classes": [traffic]}


@examples(8)
@given(scenario=scenarios(), factor=st.floats(1.1, 4.0))
def test_more_load_never_costs_less(scenario, factor, world):
    low = plan_or_none(scenario, world)
    high = plan_or_none(with_load(scenario, factor), world)
    event(f"feasible at the load: {low is not None}, at more: {high is not None}")
    if low is None:
        assert high is None  # what cannot be served at a load cannot be served at more
    elif high is not None:
        assert high.cost_per_hour >= low.cost_per_hour * (1 - 1e-6)


@examples(8)
@given(scenario=scenarios(), factor=st.floats(0.25, 4.0))
def test_price_changes_move_the_cost_the_right_way(scenario, factor, world):
    """Scaling the price of the device the plan uses by f: the cost moves in f's direction, at most by f."""
    plan = plan_or_none(scenario, world)
    assume(plan is not None)
    device = plan.replicas[0].gpu
    price = world.prices[device].usd_per_hour * factor
    assume(price <= PLAUSIBLE_BOUNDS["PriceSpec"]["usd_per_hour"][1])
    changed = plan_or_none({**scenario, "prices": {device: price}}, world)
    assert changed is not None  # the same replicas remain possible
    if factor >= 1:
        assert plan.cost_per_hour * (1 - 1e-6) <= changed.cost_per_hour <= plan.cost_per_hour * factor * (1 + 1e-6)
    else:
        assert plan.cost_per_hour * factor * (1 - 1e-6) <= changed.cost_per_hour <= plan.cost_per_hour * (1 + 1e-6)


@st.composite
def two_class_scenarios(draw) -> dict:
    """Two classes (a closed loop and Poisson arrivals) on two or three devices and methods, with alternatives:
    options may serve both classes on one replica, where the combined load must meet both SLOs."""
    scenario = draw(scenarios())
    chat, api = draw(traffic_classes("concurrency")), draw(traffic_classes("rate"))
    chat["name"], api["name"] = "chat", "api"
    return {**scenario, "alternatives": True, "classes": [chat, api],
            "gpus": draw(st.lists(st.sampled_from(DEVICES), min_size=2, max_size=3, unique=True)),
            "methods": draw(st.lists(st.sampled_from(METHODS), min_size=2, max_size=3, unique=True))}


@examples(6)
@given(scenario=two_class_scenarios())
def test_two_classes_meet_their_slos_where_they_share_a_replica(scenario, world):
    """Each class's figures on each replica group are taken under the load of every class the group serves: each
    meets its SLOs at its statistic, and the groups carry each class's whole load."""
    plan = plan_or_none({**scenario, "alternatives": False}, world)
    assume(plan is not None)
    by_name = {traffic["name"]: traffic for traffic in scenario["classes"]}
    served = dict.fromkeys(by_name, 0.0)
    for group in plan.replicas:
        event(f"classes on a group: {len(group.classes)}")
        for figures in group.classes:
            traffic = by_name[figures.name]
            if "ttft_ms" in traffic:
                assert figures.ttft_at_statistic_ms <= traffic["ttft_ms"] * (1 + 1e-9)
            if "tpot_ms" in traffic:
                assert figures.tpot_at_statistic_ms <= traffic["tpot_ms"] * (1 + 1e-9)
            served[figures.name] += figures.load_per_replica * group.count
    for name, traffic in by_name.items():
        assert served[name] == pytest.approx(traffic.get("concurrency", traffic.get("rate_per_s")), rel=1e-6)


def restricted(scenario: dict, label: str) -> dict:
    """The scenario an alternative's label names: one device, one method, or unquantized weights."""
    if label.startswith("on "):
        return {**scenario, "alternatives": False, "gpus": [label.split()[1]]}
    methods = ["fp16", "bf16"] if label.startswith("unquantized") else [label.split()[0]]
    return {**scenario, "alternatives": False, "methods": methods}


@examples(5)
@given(scenario=two_class_scenarios())
def test_an_alternative_is_never_cheaper_than_the_plan_and_costs_what_its_restriction_costs(scenario, world):
    """Every alternative restricts the plan's choices, so it never costs less than the plan; and it is planned as a
    plan is (shared replicas meet both classes' SLOs under the combined load), so `solve` with its restriction costs
    the same. Before alternatives settled their mixes, they could read below the plan (the 10-class benchmark's
    MI325X-only alternative at $13.65/h against the plan's $18.50/h)."""
    plan = plan_or_none(scenario, world)
    assume(plan is not None and plan.alternatives)
    for alternative in plan.alternatives:
        assert alternative.cost_per_hour >= plan.cost_per_hour * (1 - 1e-6), alternative.label
        again = plan_or_none(restricted(scenario, alternative.label), world)
        assert again is not None, alternative.label
        assert again.cost_per_hour == pytest.approx(alternative.cost_per_hour, rel=1e-6), alternative.label


@examples(5)
@given(scenario=scenarios())
def test_the_same_input_gives_the_same_plan(scenario, world):
    first, second = plan_or_none(scenario, world), plan_or_none(scenario, world)
    event(f"feasible: {first is not None}")
    if first is None:
        assert second is None
        return
    strip = lambda plan: {**plan.model_dump(), "stats": None}  # noqa: E731 - solve time differs
    assert strip(first) == strip(second)


# ---------------------------------------------------------------- generated devices (valid)


@st.composite
def devices(draw) -> GPUSpec:
    memory = draw(st.floats(16.0, 192.0))
    fp16 = draw(st.floats(30.0, 2000.0))
    return GPUSpec(
        id="generated-gpu", name="Generated device", kind="gpu", device_class="datacenter", vendor="NVIDIA",
        architecture="generated", compute_capability=9.0, memory_gb=memory,
        bandwidth_tb_s=draw(st.floats(0.3, 8.0)), tflops_fp16=fp16, tflops_bf16=fp16, tflops_fp8=2 * fp16,
        tops_int8=2 * fp16, interconnect="nvlink", interconnect_gb_s=draw(st.floats(32.0, 900.0)),
        source="generated by tests/test_properties.py")


def device_world(device: GPUSpec, usd: float):
    price = PriceSpec(gpu=device.id, usd_per_hour=usd, provider="test", as_of="2026-12", source="generated")
    return build_world(make_plugin_set(extra=[DevicePlugin("generated-devices", [device], [price])],
                                       entry_points=False))


@examples(5)
@given(device=devices(), usd=st.floats(0.2, 10.0), speedup=st.floats(1.1, 3.0),
       traffic=traffic_classes(), model=st.sampled_from(MODELS))
def test_a_faster_device_at_the_same_price_never_costs_more(device, usd, speedup, traffic, model):
    faster = device.model_copy(update={"bandwidth_tb_s": device.bandwidth_tb_s * speedup,
                                       **{k: getattr(device, k) * speedup for k in
                                          ("tflops_fp16", "tflops_bf16", "tflops_fp8", "tops_int8")}})
    scenario = {"model": model, "gpus": [device.id], "methods": ["fp16", "awq-int4"], "frameworks": ["vllm"],
                "max_gpus": 2, "alternatives": False, "margin": "none", "classes": [traffic]}
    slow, fast = plan_or_none(scenario, device_world(device, usd)), plan_or_none(scenario, device_world(faster, usd))
    event(f"feasible on the slower device: {slow is not None}, on the faster: {fast is not None}")
    if fast is None:
        assert slow is None
    elif slow is not None:
        assert fast.cost_per_hour <= slow.cost_per_hour * (1 + 1e-6)
    if fast is not None:  # and what a plan costs is replicas x GPUs x the device's price
        assert fast.cost_per_hour == pytest.approx(sum(g.count * g.gpus_per_replica for g in fast.replicas) * usd)


# ---------------------------------------------------------------- broken input through the command line

JUNK = st.one_of(
    st.integers(-10 ** 20, 10 ** 20), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2), st.just(""), st.just(0), st.just(-1),
)


def toml_value(value) -> str:
    """A Python value as a TOML inline value (inf and nan included, as TOML 1.0 spells them)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(top: dict, tables: dict[str, list[dict]]) -> str:
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, rows in tables.items():
        for row in rows:
            lines.append(f"\n[[{name}]]")
            lines += [f"{key} = {toml_value(value)}" for key, value in row.items()]
    return "\n".join(lines) + "\n"


SCENARIO_TOP = ("model", "max_gpus", "objective", "max_configurations", "prices", "gpu_count", "catalogs",
                "model_config", "time_limit_s", "batch_sizes", "margin", "bogus_field")
CLASS_FIELDS = ("name", "prompt_tokens", "output_tokens", "concurrency", "rate_per_s", "ttft_ms", "tpot_ms",
                "min_tokens_per_s", "max_ppl_delta", "use_case", "slo_statistic", "requests_per_client",
                "concurency")
PLAUSIBLE = {"model": st.sampled_from(("llama-3.1-8b", "llama-3.2-1b", "no-such-model")),
             "objective": st.sampled_from(("cost", "latency", "balanced", "fastest")),
             "concurrency": st.integers(-2, 2_000_000), "rate_per_s": st.floats(-1, 2e6),
             "prompt_tokens": st.integers(-5, 3_000_000), "ttft_ms": st.floats(-1, 1e8),
             "use_case": st.sampled_from(("chat_general", "poetry"))}


@st.composite
def broken_scenarios(draw) -> str:
    """A valid one-device scenario with one to three fields replaced by junk, plausible values or nothing."""
    top = {"model": "llama-3.1-8b", "gpus": ["l4"], "methods": ["fp16", "awq-int4"], "frameworks": ["vllm"],
           "max_gpus": 1}
    traffic = {"name": "chat", "prompt_tokens": 256, "output_tokens": 128, "concurrency": 4, "ttft_ms": 2000}
    for _ in range(draw(st.integers(1, 3))):
        in_class = draw(st.booleans())
        field = draw(st.sampled_from(CLASS_FIELDS if in_class else SCENARIO_TOP))
        target = traffic if in_class else top
        action = draw(st.sampled_from(("junk", "plausible", "delete")))
        if action == "delete":
            target.pop(field, None)
        else:
            target[field] = draw(PLAUSIBLE.get(field, JUNK) if action == "plausible" else JUNK)
    tables = {} if draw(st.integers(0, 9)) == 0 else {"class": [traffic]}  # sometimes no [[class]] at all
    return toml_document(top, tables)


@examples(40)
@given(text=broken_scenarios())
def test_any_scenario_file_ends_cleanly(text, tmp_path):
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    assert_clean_exit(*run_cli(["solve", path, "--no-alternatives", "--json"]))


GPU_ROW, PRICE_ROW = MY_GPUS["gpu"][0], MY_GPUS["price"][0]


@st.composite
def broken_catalogs(draw) -> tuple[str, dict, dict]:
    gpu, price = dict(GPU_ROW), dict(PRICE_ROW)
    for _ in range(draw(st.integers(0, 3))):
        row = draw(st.sampled_from((gpu, price)))
        field = draw(st.sampled_from(sorted(row) + ["bandwith_tb_s", "memory"]))
        action = draw(st.sampled_from(("junk", "scale", "delete")))
        if action == "delete":
            row.pop(field, None)
        elif action == "scale" and isinstance(row.get(field), (int, float)) and not isinstance(row[field], bool):
            row[field] = row[field] * draw(st.sampled_from((-1, 0, 1e-3, 10, 1000, 1e9)))
        else:
            row[field] = draw(JUNK)
    return toml_document({"schema_version": 1}, {"gpu": [gpu], "price": [price]}), gpu, price


@examples(40)
@given(generated=broken_catalogs())
def test_any_catalog_ends_cleanly_and_accepted_rows_are_plausible(generated, tmp_path):
    text, gpu, price = generated
    path = tmp_path / "gpus.toml"
    path.write_text(text)
    code, errors, out = run_cli(["list", "gpus", "--json", "--catalog", path])
    assert_clean_exit(code, errors, out)
    if code != 0:
        return
    listed = next(row for row in json.loads(out) if row["id"] == gpu["id"])
    for field, (low, high, _) in PLAUSIBLE_BOUNDS["GPUSpec"].items():
        value = listed[field]
        assert value is None or (math.isfinite(value) and low <= value <= high), (field, value)
    assert 0 < listed["price"]["usd_per_hour"] <= PLAUSIBLE_BOUNDS["PriceSpec"]["usd_per_hour"][1]


CONFIG = {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4,
          "intermediate_size": 1024, "vocab_size": 32000, "model_type": "llama", "max_position_embeddings": 4096}
CONFIG_KEYS = tuple(CONFIG) + ("head_dim", "num_local_experts", "num_experts_per_tok", "first_k_dense_replace",
                               "moe_intermediate_size", "tie_word_embeddings", "text_config", "_name_or_path")


@st.composite
def broken_configs(draw) -> dict:
    config = dict(CONFIG)
    if draw(st.booleans()):
        config.update(num_local_experts=8, num_experts_per_tok=2, moe_intermediate_size=256)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(CONFIG_KEYS))
        action = draw(st.sampled_from(("junk", "count", "delete")))
        if action == "delete":
            config.pop(key, None)
        elif action == "count":
            config[key] = draw(st.integers(-3, 10 ** 12))
        else:
            config[key] = draw(JUNK)
    return config


@examples(40)
@given(config=broken_configs())
def test_any_config_json_ends_cleanly(config, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))  # NaN and Infinity as Python's json writes them
    code, errors, out = run_cli(["estimate", "--model-config", path, "--method", "fp16", "--gpu", "l4",
                                 "--framework", "vllm", "--json"])
    assert_clean_exit(code, errors, out)
    if code == 0:
        result = json.loads(out)
        for key in ("ttft_ms", "tpot_ms", "memory_gb_per_gpu", "weights_gb"):
            assert result[key] is not None and math.isfinite(result[key]) and result[key] > 0, key
