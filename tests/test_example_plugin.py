"""The example plugin package (examples/quantplan-example-plugin) installed the way a user would, offline
(pip --no-index --no-build-isolation --target), then found through its entry point and planned with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantplan.plugins.manager import make_plugin_set
from quantplan.solver.registry import build_world
from quantplan.solver.shapes import parameter_counts

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "examples" / "quantplan-example-plugin"
A6000_PRICE = 1.99  # the example's PriceSpec
A6000_BANDWIDTH = 0.768e12  # B/s, the example's GPUSpec
GPTQ_INT8_BITS = 8.125  # 8 bits + an FP16 scale per 128 weights


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(target), str(PACKAGE)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (target / "quantplan_example_plugin" / "__init__.py").exists()
    return target


def quantplan(installed: Path, *argv: str) -> tuple[int, dict, str]:
    """Run `python -m quantplan.cli ARGV --json` with the installed package on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    env.pop("QUANTPLAN_STRICT_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "quantplan.cli", *argv, "--json"], capture_output=True,
                          text=True, timeout=300, env=env)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def test_the_entry_point_is_found(installed):
    code, data, errors = quantplan(installed, "plugins")
    assert code == 0 and errors == "", errors
    assert {"name": "example", "origin": "quantplan-example-plugin 0.1.0"} in data["loaded"]
    assert data["failed"] == []


def test_estimate_on_the_plugins_device_and_method(installed):
    code, result, errors = quantplan(installed, "estimate", "--model", "llama-3.1-8b", "--method", "GPTQ INT8",
                                     "--gpu", "RTX A6000", "--framework", "vllm", "--concurrency", "1")
    assert code == 0, errors
    assert (result["gpu"], result["method"]) == ("rtx-a6000", "gptq-int8")
    world = build_world(make_plugin_set(entry_points=False))
    counts = parameter_counts(world.models.get("llama-3.1-8b"))
    # linear layers at 8.125 bits, norms, embedding and untied lm_head at FP16 (2 bytes)
    weights = counts.linear_total * GPTQ_INT8_BITS / 8 + (counts.norms + counts.embedding + counts.lm_head) * 2
    assert result["weights_gb"] == pytest.approx(weights / 1e9, rel=1e-12)
    assert result["cost_per_hour"] == pytest.approx(A6000_PRICE)
    assert result["tpot_ms"] >= weights / A6000_BANDWIDTH * 1e3  # no step reads the weights faster than 768 GB/s
    sensitivity, _ = world.quality.family_sensitivity("llama-3")
    assert result["ppl_delta_pct"] == pytest.approx(0.0001132 * sensitivity * 100, rel=1e-9)
    assert "Marlin" in result["execution"]


def test_solve_plans_with_the_plugin(installed):
    code, plan, errors = quantplan(installed, "solve", "--model", "llama-3.1-8b", "--gpu", "rtx-a6000", "--method",
                                   "gptq-int8", "--framework", "vllm", "--concurrency", "8", "--tpot-ms", "50",
                                   "--no-alternatives")
    assert code == 0, errors
    [group] = plan["replicas"]
    assert (group["gpu"], group["method"], group["framework"]) == ("rtx-a6000", "gptq-int8", "vllm")
    assert plan["cost_per_hour"] == pytest.approx(group["count"] * group["gpus_per_replica"] * A6000_PRICE)
    assert group["tpot_ms"] <= 50


def test_other_engines_do_not_run_the_method(installed):
    code, result, errors = quantplan(installed, "estimate", "--model", "llama-3.1-8b", "--method", "gptq-int8",
                                     "--gpu", "rtx-a6000", "--framework", "sglang")
    assert code == 1, errors
    assert result["compatible"] is False and "sglang does not run gptq-int8" in result["reasons"][0]
