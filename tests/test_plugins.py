"""The plugin system: extra plugins in code, entry points, duplicate ids, broken plugins, the hook
contract itself, and user catalogs (`--catalog FILE`)."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from quantplan.cli import cli, main
from quantplan.plugins import hookspecs
from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.plugins.hookspecs import hookimpl
from quantplan.plugins.manager import STRICT_ENV, make_plugin_set
from quantplan.solver.api import solve
from quantplan.solver.errors import PluginError, QuantplanError
from quantplan.solver.registry import build_world
from quantplan.solver.specs import GPUSpec, PriceSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CATALOGS = ROOT / "catalogs"

TEST_GPU_PRICE = 1.23


def a100_like(gpu_id: str, aliases: tuple[str, ...] = ()) -> GPUSpec:
    """An A100-80GB-shaped device under another id (figures as in catalogs/gpus.toml)."""
    return GPUSpec(
        id=gpu_id, name=f"Test device {gpu_id}", aliases=aliases, kind="gpu", device_class="datacenter",
        vendor="NVIDIA", architecture="Ampere (GA100)", compute_capability=8.0, memory_gb=80,
        bandwidth_tb_s=2.039, tflops_fp16=312.0, tflops_bf16=312.0, tflops_fp8=0, tops_int8=624.0,
        tflops_fp4=0, interconnect="nvlink", interconnect_gb_s=300, max_devices_per_node=8,
        source="test fixture: A100 80GB SXM figures under a new id",
    )


def price_for(gpu_id: str, usd: float) -> PriceSpec:
    return PriceSpec(gpu=gpu_id, usd_per_hour=usd, provider="test", as_of="2026-01", source="test fixture")


class TestDevicePlugin:
    """A plugin written the way a third party would: its own class, hookimpl-decorated methods."""

    name = "test-devices"

    def __init__(self) -> None:
        self._delegate = DevicePlugin(self.name, [a100_like("test-gpu", ("Test GPU 9000",))],
                                      [price_for("test-gpu", TEST_GPU_PRICE)])

    @hookimpl
    def quantplan_gpus(self):
        return self._delegate.devices

    @hookimpl
    def quantplan_prices(self):
        return self._delegate.prices

    @hookimpl
    def quantplan_memory_terms(self, config, context_tokens):
        return self._delegate.quantplan_memory_terms(config, context_tokens)

    @hookimpl
    def quantplan_step_terms(self, config, step):
        return self._delegate.quantplan_step_terms(config, step)

    @hookimpl
    def quantplan_cost_terms(self, config, prices):
        return self._delegate.quantplan_cost_terms(config, prices)


TestDevicePlugin.__test__ = False  # not a pytest test class


def small_scenario(gpu: str, **extra) -> dict:
    return {"model": "llama-2-7b", "gpus": [gpu], "max_gpus": 1, "methods": ["fp16"],
            "classes": [{"prompt_tokens": 128, "output_tokens": 128, "concurrency": 1}],
            "alternatives": False, **extra}


# ---------------------------------------------------------------- 1. a plugin registered in code


def test_extra_plugin_declares_device_and_price():
    plugins = make_plugin_set(extra=[TestDevicePlugin()], entry_points=False)
    assert plugins.origins["test-devices"] == "registered in code"
    assert "test-devices" in plugins.names()
    world = build_world(plugins)
    gpu = world.gpus.get("test-gpu")
    assert gpu.id == "test-gpu"
    assert gpu.memory_gb == 80
    assert world.gpus.get("test gpu 9000").id == "test-gpu"  # alias, case-insensitive
    assert world.gpus.get("TEST GPU 9000").id == "test-gpu"
    assert world.prices["test-gpu"].usd_per_hour == TEST_GPU_PRICE
    # The device exists only because of the plugin.
    plain = build_world(make_plugin_set(entry_points=False))
    assert "test-gpu" not in plain.gpus
    with pytest.raises(QuantplanError, match="unknown device 'test-gpu'"):
        plain.gpus.get("test-gpu")


def test_extra_plugin_device_is_planned_at_its_price():
    world = build_world(make_plugin_set(extra=[TestDevicePlugin()], entry_points=False))
    plan = solve(small_scenario("test-gpu"), world=world)
    assert plan.status == "optimal"
    assert len(plan.replicas) == 1
    replica = plan.replicas[0]
    assert replica.gpu == "test-gpu"
    assert replica.gpus_per_replica == 1
    assert replica.count == 1
    assert replica.method == "fp16"
    assert replica.cost_per_hour == pytest.approx(TEST_GPU_PRICE, rel=1e-12)
    assert plan.cost_per_hour == pytest.approx(TEST_GPU_PRICE, rel=1e-12)


def test_extra_device_plugin_instance_of_builtin_class():
    """DevicePlugin itself works as an extra plugin; the plan on an A100 clone matches the real A100."""
    plugin = DevicePlugin("clone-devices", [a100_like("a100-clone")], [price_for("a100-clone", 0.5)])
    world = build_world(make_plugin_set(extra=[plugin], entry_points=False))
    clone = solve(small_scenario("a100-clone"), world=world)
    real = solve(small_scenario("a100-80gb", prices={"a100-80gb": 0.5}), world=world)
    assert clone.replicas[0].gpu == "a100-clone"
    assert real.replicas[0].gpu == "a100-80gb"
    assert clone.cost_per_hour == pytest.approx(0.5, rel=1e-12)
    # Same figures as the catalog's A100 80GB, except possibly the usable memory.
    catalog = {g["id"]: g for g in tomllib.loads((CATALOGS / "gpus.toml").read_text())["gpu"]}
    assert catalog["a100-80gb"]["bandwidth_tb_s"] == world.gpus.get("a100-clone").bandwidth_tb_s
    assert clone.replicas[0].tpot_ms == pytest.approx(real.replicas[0].tpot_ms, rel=1e-9)


def test_extra_plugin_name_clash_is_an_error():
    first = DevicePlugin("same-name", [a100_like("gpu-one")])
    second = DevicePlugin("same-name", [a100_like("gpu-two")])
    with pytest.raises(QuantplanError, match="two plugins are named 'same-name'"):
        make_plugin_set(extra=[first, second], entry_points=False)


# ---------------------------------------------------------------- 2. entry points, no pip


GOOD_MODULE = '''
from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.solver.specs import GPUSpec, PriceSpec

plugin = DevicePlugin("fakegood", [GPUSpec(
    id="fake-ep-gpu", name="Fake entry-point GPU", aliases=("Fake EP GPU",), kind="gpu",
    device_class="datacenter", vendor="NVIDIA", architecture="Ampere (GA100)", compute_capability=8.0,
    memory_gb=48, bandwidth_tb_s=1.5, tflops_fp16=150.0, source="entry-point test fixture")],
    [PriceSpec(gpu="fake-ep-gpu", usd_per_hour=0.77, provider="test", as_of="2026-01", source="fixture")])
'''

BAD_MODULE = '''
raise ImportError("fakedist needs libmissing.so")
'''


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """A dist-info directory with two entry points in group 'quantplan': one good, one that cannot import."""
    good, bad = "plugin_fakedist_good", "plugin_fakedist_bad"
    (tmp_path / f"{good}.py").write_text(GOOD_MODULE)
    (tmp_path / f"{bad}.py").write_text(BAD_MODULE)
    info = tmp_path / "fakedist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakedist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[quantplan]\nfakegood = {good}:plugin\nfakebad = {bad}:plugin\n")
    monkeypatch.delenv(STRICT_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for name in (good, bad):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()


def test_entry_points_load_good_and_record_bad(fake_distribution):
    plugins = make_plugin_set()
    assert "fakegood" in plugins.names()
    assert plugins.origins["fakegood"] == "fakedist 1.0"
    assert "fakebad" not in plugins.names()
    assert len(plugins.failures) == 1
    failure = plugins.failures[0]
    assert failure.name == "fakebad"
    assert failure.distribution == "fakedist"
    assert failure.version == "1.0"
    assert failure.error == "ImportError: fakedist needs libmissing.so"
    assert failure.line() == ("plugin 'fakebad' (fakedist 1.0) failed: "
                              "ImportError: fakedist needs libmissing.so")
    world = build_world(plugins)
    gpu = world.gpus.get("fake ep gpu")
    assert gpu.id == "fake-ep-gpu"
    assert gpu.memory_gb == 48
    assert world.prices["fake-ep-gpu"].usd_per_hour == 0.77


def test_entry_points_skipped_when_disabled(fake_distribution):
    plugins = make_plugin_set(entry_points=False)
    assert "fakegood" not in plugins.names()
    assert plugins.failures == []
    assert "fake-ep-gpu" not in build_world(plugins).gpus


def test_plugins_command_lists_loaded_and_failed(fake_distribution):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    loaded = {p["name"]: p["origin"] for p in data["loaded"]}
    assert loaded["fakegood"] == "fakedist 1.0"
    assert loaded["nvidia-gpus"] == "quantplan (built-in)"
    assert data["failed"] == [{"name": "fakebad", "distribution": "fakedist", "version": "1.0",
                               "error": "ImportError: fakedist needs libmissing.so"}]


def test_strict_mode_makes_a_failed_entry_point_fatal(fake_distribution, monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginError, match=r"plugin 'fakebad' \(fakedist 1.0\) failed: ImportError"):
        make_plugin_set()


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_strict_mode_off_values(fake_distribution, monkeypatch, value):
    monkeypatch.setenv(STRICT_ENV, value)
    plugins = make_plugin_set()
    assert plugins.strict is False
    assert [f.name for f in plugins.failures] == ["fakebad"]


# ---------------------------------------------------------------- 3. two providers of one id


def test_two_providers_of_one_device_id():
    first = DevicePlugin("dup-provider-a", [a100_like("dup-gpu")])
    second = DevicePlugin("dup-provider-b", [a100_like("dup-gpu")])
    plugins = make_plugin_set(extra=[first, second], entry_points=False)
    with pytest.raises(QuantplanError) as raised:
        build_world(plugins)
    message = str(raised.value)
    assert "'dup-gpu'" in message
    assert "'dup-provider-a'" in message
    assert "'dup-provider-b'" in message
    assert message == "device 'dup-gpu' is provided by both 'dup-provider-a' and 'dup-provider-b'"


def test_extra_plugin_redeclaring_a_builtin_device():
    plugin = DevicePlugin("h100-again", [a100_like("h100-sxm")])
    with pytest.raises(QuantplanError) as raised:
        build_world(make_plugin_set(extra=[plugin], entry_points=False))
    assert str(raised.value) == "device 'h100-sxm' is provided by both 'nvidia-gpus' and 'h100-again'"


def test_two_prices_for_one_device():
    plugin = DevicePlugin("second-price", [], [price_for("h100-sxm", 1.0)])
    with pytest.raises(QuantplanError) as raised:
        build_world(make_plugin_set(extra=[plugin], entry_points=False))
    message = str(raised.value)
    assert "'h100-sxm'" in message and "'nvidia-gpus'" in message and "'second-price'" in message


def test_price_for_unknown_device():
    plugin = DevicePlugin("orphan-price", [], [price_for("no-such-gpu", 1.0)])
    with pytest.raises(QuantplanError, match="a price is given for unknown device 'no-such-gpu'"):
        build_world(make_plugin_set(extra=[plugin], entry_points=False))


# ---------------------------------------------------------------- 4. a plugin that raises at solve time


class BrokenSpeedPlugin:
    name = "broken-speed"

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def quantplan_step_terms(self, config, step):
        self.calls += 1
        raise RuntimeError("boom in step terms")


class BrokenDeclarationPlugin:
    name = "broken-declaration"

    @hookimpl
    def quantplan_gpus(self):
        raise ValueError("cannot read my device list")


def test_plugin_raising_at_solve_time_is_dropped_and_reported(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    reference = solve(small_scenario("a100-80gb"), world=build_world(make_plugin_set(entry_points=False)))
    broken = BrokenSpeedPlugin()
    plugins = make_plugin_set(extra=[broken], entry_points=False)
    assert plugins.strict is False
    plan = solve(small_scenario("a100-80gb"), world=build_world(plugins))
    # Called once on its own, found to raise, unregistered: never called again.
    assert broken.calls == 1
    assert plan.status == "optimal"
    assert plan.replicas[0].gpu == "a100-80gb"
    assert plan.cost_per_hour == pytest.approx(reference.cost_per_hour, rel=1e-12)
    assert plan.replicas[0].tpot_ms == pytest.approx(reference.replicas[0].tpot_ms, rel=1e-12)
    assert len(plugins.failures) == 1
    failure = plugins.failures[0]
    assert failure.name == "broken-speed"
    assert failure.error == "quantplan_step_terms raised RuntimeError: boom in step terms"
    assert "broken-speed" not in plugins.names()


def test_plugin_raising_at_solve_time_is_fatal_in_strict_mode(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")
    plugins = make_plugin_set(extra=[BrokenSpeedPlugin()], entry_points=False)
    assert plugins.strict is True
    world = build_world(plugins)
    with pytest.raises(PluginError, match="plugin 'broken-speed'.*quantplan_step_terms raised RuntimeError: "
                                          "boom in step terms"):
        solve(small_scenario("a100-80gb"), world=world)


def test_strict_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")
    plugins = make_plugin_set(extra=[BrokenSpeedPlugin()], entry_points=False, strict=False)
    plan = solve(small_scenario("a100-80gb"), world=build_world(plugins))
    assert plan.replicas[0].gpu == "a100-80gb"
    assert [f.name for f in plugins.failures] == ["broken-speed"]


def test_declaration_hook_raising_is_dropped_and_reported(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    plugins = make_plugin_set(extra=[BrokenDeclarationPlugin()], entry_points=False)
    world = build_world(plugins)
    assert "h100-sxm" in world.gpus  # the built-ins survive
    assert [(f.name, f.error) for f in plugins.failures] == [
        ("broken-declaration", "quantplan_gpus raised ValueError: cannot read my device list")]
    assert "broken-declaration" not in plugins.names()


def test_declaration_hook_raising_in_strict_mode():
    with pytest.raises(PluginError, match="cannot read my device list"):  # declarations are checked up front
        build_world(make_plugin_set(extra=[BrokenDeclarationPlugin()], entry_points=False, strict=True))


# ---------------------------------------------------------------- 5. the hook contract itself


EXPECTED_HOOKS = {
    "quantplan_gpus", "quantplan_prices", "quantplan_methods", "quantplan_kv_cache_dtypes",
    "quantplan_frameworks", "quantplan_models", "quantplan_quality_data", "quantplan_execution",
    "quantplan_incompatibility", "quantplan_memory_terms", "quantplan_step_terms", "quantplan_quality_terms",
    "quantplan_cost_terms", "quantplan_scheduling",
}


def hook_names() -> list[str]:
    return sorted(name for name, value in vars(hookspecs).items()
                  if name.startswith("quantplan_") and inspect.isfunction(value))


def test_hook_list_is_the_documented_contract():
    assert set(hook_names()) == EXPECTED_HOOKS


@pytest.mark.parametrize("name", sorted(EXPECTED_HOOKS))
def test_hook_has_return_doc_and_a_builtin_implementation(name):
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec)
    assert doc and ":return:" in doc
    # Every parameter of the hook is documented too.
    for parameter in inspect.signature(spec).parameters:
        assert f":param {parameter}:" in doc
    plugins = make_plugin_set(entry_points=False)
    impls = getattr(plugins.manager.hook, name).get_hookimpls()
    assert len(impls) >= 1
    builtin = {n for n, origin in plugins.origins.items() if origin == "quantplan (built-in)"}
    assert {impl.plugin_name for impl in impls} <= builtin


def test_execution_hook_is_firstresult():
    plugins = make_plugin_set(entry_points=False)
    assert plugins.manager.hook.quantplan_execution.spec.opts["firstresult"] is True
    others = EXPECTED_HOOKS - {"quantplan_execution"}
    assert not any(getattr(plugins.manager.hook, n).spec.opts["firstresult"] for n in others)


# ---------------------------------------------------------------- 6. --catalog FILE


MY_GPUS = EXAMPLES / "my-gpus.toml"


def test_example_catalog_registers_rtx_pro_6000():
    plugins = make_plugin_set(catalogs=[MY_GPUS], entry_points=False)
    assert plugins.origins["catalog:my-gpus.toml"] == "user catalog"
    world = build_world(plugins)
    assert world.gpus.get("RTX PRO 6000").id == "rtx-pro-6000"
    assert world.prices["rtx-pro-6000"].usd_per_hour == 1.8


def test_list_gpus_with_catalog():
    result = CliRunner().invoke(cli, ["list", "gpus", "--catalog", str(MY_GPUS), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    row = rows["rtx-pro-6000"]
    assert row["memory_gb"] == 96
    assert row["bandwidth_tb_s"] == 1.792
    assert row["price"]["usd_per_hour"] == 1.8
    assert "h100-sxm" in rows  # the built-ins are still there
    plain = CliRunner().invoke(cli, ["list", "gpus", "--json"])
    assert "rtx-pro-6000" not in {row["id"] for row in json.loads(plain.stdout)}
    assert len(rows) == len(json.loads(plain.stdout)) + 1


def test_solve_on_a_catalog_device_uses_its_price():
    result = CliRunner().invoke(cli, ["solve", "--catalog", str(MY_GPUS), "--model", "llama-2-7b",
                                      "--gpu", "rtx-pro-6000", "--max-gpus", "1", "--method", "fp16",
                                      "--concurrency", "1", "--no-alternatives", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["status"] == "optimal"
    assert plan["replicas"][0]["gpu"] == "rtx-pro-6000"
    assert plan["cost_per_hour"] == pytest.approx(1.8, rel=1e-12)


def one_line_error(capsys, argv: list[str]) -> str:
    main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_malformed_catalog_toml(tmp_path, capsys):
    bad = tmp_path / "plugin_bad.toml"
    bad.write_text('schema_version = 1\n[[gpu]\nid = "x"\n')
    argv = ["list", "gpus", "--catalog", str(bad), "--json"]
    assert CliRunner().invoke(cli, argv).exit_code == 2
    line = one_line_error(capsys, argv)
    assert f"--catalog {bad}: malformed TOML" in line


def test_catalog_row_missing_a_required_field(tmp_path, capsys):
    rows = tomllib.loads(MY_GPUS.read_text())
    gpu = dict(rows["gpu"][0], id="missing-bw")
    del gpu["bandwidth_tb_s"]
    bad = tmp_path / "plugin_missing.toml"
    bad.write_text("schema_version = 1\n\n[[gpu]]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in gpu.items()))
    assert tomllib.loads(bad.read_text())["gpu"][0]["id"] == "missing-bw"  # the file itself is valid TOML
    argv = ["list", "gpus", "--catalog", str(bad), "--json"]
    assert CliRunner().invoke(cli, argv).exit_code == 2
    line = one_line_error(capsys, argv)
    assert "bandwidth_tb_s" in line
    assert "[[gpu]] #1 (missing-bw)" in line


def test_catalog_with_a_table_users_may_not_add(tmp_path, capsys):
    bad = tmp_path / "plugin_method.toml"
    bad.write_text(textwrap.dedent("""\
        schema_version = 1
        [[method]]
        id = "my-method"
        """))
    argv = ["list", "gpus", "--catalog", str(bad)]
    assert CliRunner().invoke(cli, argv).exit_code == 2
    line = one_line_error(capsys, argv)
    assert "unknown table [[method]]" in line
    assert "allowed: gpu, price, model" in line


def test_missing_catalog_file(tmp_path, capsys):
    missing = tmp_path / "plugin_nowhere.toml"
    argv = ["list", "gpus", "--catalog", str(missing)]
    assert CliRunner().invoke(cli, argv).exit_code == 2
    assert one_line_error(capsys, argv) == f"error: --catalog {missing}: no such file"
