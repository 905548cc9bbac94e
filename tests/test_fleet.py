"""Fleet planning: several models with their own classes on one device pool, one integer program."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from quantplan.cli import cli
from quantplan.solver.registry import load_world

TWO_MODELS = textwrap.dedent('''
    gpus = ["h100-sxm"]
    {pool}
    max_gpus = 2

    [[model]]
    id = "llama-3.1-8b"
    [[model.class]]
    name = "chat"
    concurrency = 32
    prompt_tokens = 1024
    output_tokens = 256
    ttft_ms = 1000
    tpot_ms = 30
    max_ppl_delta = 0.3

    [[model]]
    id = "llama-3.1-70b"
    [[model.class]]
    name = "chat"
    concurrency = 16
    prompt_tokens = 1024
    output_tokens = 256
    ttft_ms = 2000
    tpot_ms = 40
    max_ppl_delta = 0.3
''')


def solve(tmp_path, pool: str) -> tuple[int, dict]:
    path = tmp_path / "fleet.toml"
    path.write_text(TWO_MODELS.format(pool=pool))
    result = CliRunner().invoke(cli, ["solve", str(path), "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def alone(model: str, concurrency: int, ttft: int, tpot: int) -> dict:
    result = CliRunner().invoke(cli, [
        "solve", "--model", model, "--gpu", "h100-sxm", "--max-gpus", "2", "--concurrency", str(concurrency),
        "--prompt-tokens", "1024", "--output-tokens", "256", "--ttft-ms", str(ttft), "--tpot-ms", str(tpot),
        "--max-ppl-delta", "0.3", "--no-alternatives", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_two_models_on_a_pool_that_holds_both_cost_what_each_costs_alone(tmp_path):
    """With four H100s the models do not compete: the fleet plan is the two single-model plans side by
    side (the 8B on one GPU, the 70B in GPTQ INT4 on vLLM's Marlin kernel on one: FP8 on two while Marlin's
    compute share was the 0.45 estimate), 2 GPUs at the catalog's H100 price."""
    code, plan = solve(tmp_path, "gpu_count = { h100-sxm = 4 }")
    small, large = alone("llama-3.1-8b", 32, 1000, 30), alone("llama-3.1-70b", 16, 2000, 40)
    price = load_world().prices["h100-sxm"].usd_per_hour
    assert code == 0
    assert plan["cost_per_hour"] == pytest.approx(small["cost_per_hour"] + large["cost_per_hour"])
    assert plan["cost_per_hour"] == pytest.approx(2 * price)
    assert plan["pool"] == [{"gpu": "h100-sxm", "used": 2, "available": 4}]
    assert {g["model"] for g in plan["replicas"]} == {"llama-3.1-8b", "llama-3.1-70b"}
    assert {c["name"] for g in plan["replicas"] for c in g["classes"]} == {"llama-3.1-8b/chat", "llama-3.1-70b/chat"}


def test_a_pool_too_small_for_both_is_explained(tmp_path):
    """One H100 holds either model's plan, not both (each takes one)."""
    code, plan = solve(tmp_path, "gpu_count = { h100-sxm = 1 }")
    assert code == 1 and plan["status"] == "infeasible"
    assert "not within the devices available (h100-sxm=1)" in plan["reasons"][0]
    assert "needs 2 h100-sxm" in plan["reasons"][0]


def test_owned_devices_cost_nothing_by_the_hour(tmp_path):
    code, plan = solve(tmp_path, "owned = { h100-sxm = 3 }")
    assert code == 0 and plan["cost_per_hour"] == 0.0
    assert plan["pool"] == [{"gpu": "h100-sxm", "used": 2, "available": 3}]


def test_a_fleet_model_needs_an_id_or_a_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[model]]\nuse_case = "chat_general"\n[[model.class]]\nconcurrency = 1\n')
    result = CliRunner().invoke(cli, ["solve", str(path)])
    assert result.exit_code == 2
    assert "needs an id or a model_config" in result.output


def test_the_example_fleet_is_planned_within_its_pool_and_budget():
    """examples/fleet-five-models.toml: five models, twelve classes; every class fully served by replicas
    of its own model, every device within the pool, owned H100s at no price, the total within budget."""
    from quantplan.solver.api import solve as plan_for
    from quantplan.solver.scenario import load_scenario

    scenario = load_scenario(Path(__file__).resolve().parent.parent / "examples" / "fleet-five-models.toml")
    plan = plan_for(scenario)
    names = {f"{m.id}/{c.name}" for m in scenario.models for c in m.classes}
    assert len(names) == 12
    served: dict[str, float] = {}
    for group in plan.replicas:
        for figures in group.classes:
            assert figures.name.startswith(group.model + "/")
            served[figures.name] = served.get(figures.name, 0.0) + figures.share
        if group.gpu == "h100-sxm":
            assert group.cost_per_hour == 0.0
    assert served.keys() == names and all(abs(share - 1.0) < 1e-6 for share in served.values())
    limits = {"h100-sxm": 8, "h200": 8, "l40s": 8, "l4": 16}
    for row in plan.pool:
        assert row["used"] <= limits[row["gpu"]] == row["available"]
    assert plan.cost_per_hour <= 120
    rented = sum(g.count * g.cost_per_hour for g in plan.replicas)
    assert plan.cost_per_hour == pytest.approx(rented)


NO_FLOOR = textwrap.dedent('''
    gpus = ["rtx4090"]
    max_gpus = 1

    [[model]]
    id = "llama-3.1-8b"
    [[model.class]]
    name = "chat"
    concurrency = 4
    prompt_tokens = 512
    output_tokens = 128
    ttft_ms = 2000
    tpot_ms = 50
    max_ppl_delta = 0.3

    [[model]]
    id = "llama-3.1-70b"
    [[model.class]]
    name = "notes"
    concurrency = 1
    prompt_tokens = 512
    output_tokens = 128
    ttft_ms = 20000
    tpot_ms = 250
''')


def test_a_fleet_plan_flags_a_class_without_a_quality_floor(tmp_path):
    """As a one-model plan does: the 70B class has no floor, and on one RTX 4090 at 250 ms TPOT the cheapest
    answer is Q2_K (+2.16 ppl), over the loosest use case's 0.5; the bounded 8B class is not named."""
    path = tmp_path / "fleet.toml"
    path.write_text(NO_FLOOR)
    result = CliRunner().invoke(cli, ["solve", str(path), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    flagged = [n for n in plan["notes"] if "no quality floor" in n]
    assert len(flagged) == 1 and flagged[0].startswith("llama-3.1-70b/notes:") and "gguf-q2_k" in flagged[0]
    [big] = [r for r in plan["replicas"] if r["method"] == "gguf-q2_k"]
    assert big["ppl_delta"] > 0.5
