"""Hostile input, category by category (issue 9, item 6): each case ends in one line on stderr naming the
field and exit code 2, never a traceback; broken plugins are dropped, named once on stderr, and leave
the plan as it was; nothing is solved or written when an output path cannot be written."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from quantplan.cli import main
from quantplan.plugins.manager import STRICT_ENV, take_failures

ROOT = Path(__file__).resolve().parent.parent
MY_GPUS = (ROOT / "examples" / "my-gpus.toml").read_text()
SOLVE = ["solve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--concurrency", "4", "--no-alternatives"]
ESTIMATE = ["estimate", "--model", "llama-3.1-8b", "--method", "fp16", "--gpu", "h100-sxm", "--framework", "vllm"]
SMALL_CONFIG = {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4,
                "intermediate_size": 1024, "vocab_size": 32000, "model_type": "llama"}
MOE = {"num_local_experts": 8, "num_experts_per_tok": 2}


def outcome(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """Exit code, stderr lines and stdout of one in-process run of the console entry point."""
    take_failures()  # nothing left over from an earlier test
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def one_error_line(argv: list[str], capsys, *expected: str, code: int = 2) -> str:
    exit_code, lines, out = outcome(argv, capsys)
    assert exit_code == code, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in lines[0]
    assert out == ""
    return lines[0]


# ---------------------------------------------------------------- 1. loads, SLOs and prices out of range

NUMBERS = {
    "rate-inf": (SOLVE[:-3] + ["--rate", "inf", "--no-alternatives"], ["--rate inf", "finite"]),
    "rate-huge": (SOLVE[:-3] + ["--rate", "1e300", "--no-alternatives"], ["--rate 1e+300", "1000000"]),
    "rate-nan": (SOLVE[:-3] + ["--rate", "nan", "--no-alternatives"], ["--rate"]),
    "concurrency-huge": (SOLVE[:-3] + ["--concurrency", "1000000000000", "--no-alternatives"],
                         ["--concurrency 1000000000000", "1000000"]),
    "concurrency-zero": (SOLVE[:-3] + ["--concurrency", "0", "--no-alternatives"],
                         ["--concurrency 0", "greater than 0"]),
    "ttft-inf": (SOLVE + ["--ttft-ms", "inf"], ["--ttft-ms inf", "finite"]),
    "price-inf": (SOLVE + ["--price", "h100-sxm=inf"], ["--price h100-sxm=inf", "finite"]),
    "price-huge": (SOLVE + ["--price", "h100-sxm=1e300"], ["--price h100-sxm=1e+300", "1000"]),
    "gpu-count-huge": (SOLVE + ["--gpu-count", "h100-sxm=10000000"], ["--gpu-count h100-sxm=10000000"]),
    "estimate-rate-inf": (ESTIMATE + ["--rate", "inf"], ["--rate inf", "finite"]),
    "estimate-concurrency-huge": (ESTIMATE + ["--concurrency", "1000000000000"], ["--concurrency", "1000000"]),
    "estimate-price-inf": (ESTIMATE + ["--price", "h100-sxm=inf"], ["--price h100-sxm=inf", "1000"]),
    "estimate-prompt-huge": (ESTIMATE + ["--prompt-tokens", "3000000"], ["--prompt-tokens", "2000000"]),
    "sweep-inf-end": (SOLVE[:-1] + ["--vary", "concurrency=1:inf", "--engine", "serial"],
                      ["concurrency=1:inf", "finite"]),
    "sweep-price-inf": (SOLVE[:-1] + ["--price-range", "h100-sxm=1:inf", "--engine", "serial"], ["finite"]),
    "sweep-rate-huge": (SOLVE[:-1] + ["--vary", "rate=1:1e300", "--engine", "serial"], ["rate_per_s", "1000000"]),
    "sweep-price-factor-huge": (SOLVE[:-1] + ["--vary", "price-factor=1:1e9", "--engine", "serial"],
                                ["price-factor=1e+09", "1000"]),
    "sweep-points": (SOLVE[:-1] + ["--vary", "concurrency=1:8", "--points", "100000000", "--engine", "serial"],
                     ["--points 100000000"]),
}


@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_numbers_out_of_range(case, capsys):
    argv, expected = NUMBERS[case]
    if argv[0] == "solve" and ("--vary" in argv or "--price-range" in argv):
        argv = ["sweep"] + argv[1:]
    one_error_line(argv, capsys, *expected)


# ---------------------------------------------------------------- 2. output paths: checked before solving


@pytest.fixture
def no_solving(monkeypatch):
    """Any solve or validation run fails the test: the path check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("solved although the output path was known to be unwritable")

    import quantplan.solver.api as api
    import quantplan.solver.sweeps as sweeps
    import quantplan.solver.validate as validate

    monkeypatch.setattr(api, "solve", refuse)
    monkeypatch.setattr(sweeps, "run", refuse)
    monkeypatch.setattr(validate, "validation_world", refuse)


@pytest.mark.parametrize("argv, option", [
    (SOLVE + ["--write-lp", "{missing}/plan.lp"], "--write-lp"),
    (SOLVE + ["--write-lp", "{folder}"], "--write-lp"),
    (["sweep"] + SOLVE[1:-1] + ["--price-range", "h100-sxm=1:3", "--csv", "{missing}/s.csv"], "--csv"),
    (["sweep"] + SOLVE[1:-1] + ["--price-range", "h100-sxm=1:3", "--csv", "{folder}/s.csv",
                                "--plot", "{missing}/s.png"], "--plot"),
    (["validate", "--write-error-bars", "{missing}/bars.toml"], "--write-error-bars"),
    (["fit", "--write", "{folder}"], "--write"),
])
def test_unwritable_output_fails_before_any_work(argv, option, tmp_path, capsys, no_solving):
    paths = {"missing": tmp_path / "no-such-folder", "folder": tmp_path}
    argv = [a.format(**paths) for a in argv]
    one_error_line(argv, capsys, option)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even the CSV


# ---------------------------------------------------------------- 3. config.json


CONFIGS = {
    "zero-heads": ({**SMALL_CONFIG, "num_attention_heads": 0}, "num_attention_heads: 0 is below 1"),
    "number-as-string": ({**SMALL_CONFIG, "hidden_size": "512"}, 'hidden_size: expected a whole number, got "512"'),
    "text-config-not-object": ({"text_config": "hello", "model_type": "llava"}, "text_config must be a JSON object"),
    "first-k-dense-absurd": ({**SMALL_CONFIG, **MOE, "first_k_dense_replace": 10 ** 9}, "first_k_dense_replace"),
    "first-k-dense-all-layers": ({**SMALL_CONFIG, **MOE, "first_k_dense_replace": 4}, "leaves no MoE layer"),
    "layers-true": ({**SMALL_CONFIG, "num_hidden_layers": True}, "num_hidden_layers: expected a whole number, got true"),
    "layers-fraction": ({**SMALL_CONFIG, "num_hidden_layers": 4.5}, "num_hidden_layers: expected a whole number"),
    "zero-experts-per-token": ({**SMALL_CONFIG, **MOE, "num_experts_per_tok": 0}, "num_experts_per_tok: 0 is below 1"),
    "zero-kv-heads": ({**SMALL_CONFIG, "num_key_value_heads": 0}, "num_key_value_heads: 0 is below 1"),
    "zero-head-dim": ({**SMALL_CONFIG, "head_dim": 0}, "head_dim: 0 is below 1"),
    "kv-heads-not-dividing": ({**SMALL_CONFIG, "num_key_value_heads": 3}, "multiple of kv_heads"),
    "huge-layers": ({**SMALL_CONFIG, "num_hidden_layers": 10 ** 30}, "num_hidden_layers: 1e+30 is outside"),
    "flag-as-string": ({**SMALL_CONFIG, "tie_word_embeddings": "no"}, "tie_word_embeddings: expected true or false"),
    "name-not-string": ({**SMALL_CONFIG, "model_type": ["llama"]}, "model_type: expected a string"),
    "a-list": ([1, 2, 3], "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("command", ["estimate", "solve"])
def test_config_json(case, command, tmp_path, capsys):
    content, expected = CONFIGS[case]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    argv = (["estimate", "--model-config", path, "--method", "fp16", "--gpu", "h100-sxm", "--framework", "vllm"]
            if command == "estimate" else ["solve", "--model-config", path, "--gpu", "h100-sxm", "--concurrency", "1"])
    one_error_line(argv, capsys, f"--model-config {path}", expected)


@pytest.mark.parametrize("text, expected", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
    ('{"num_hidden_layers": 2,', "not valid JSON"),
])
def test_config_json_that_is_not_one(text, expected, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(text)
    one_error_line(["estimate", "--model-config", path, "--method", "fp16", "--gpu", "h100-sxm", "--framework",
                    "vllm"], capsys, expected)


# ---------------------------------------------------------------- 4. scenario files

CLASS = '[[class]]\nconcurrency = 4\n'
SCENARIOS = {
    "catalogs-not-paths": ('model = "llama-3.1-8b"\ncatalogs = [1]\n' + CLASS, "catalogs must be a list of paths"),
    "catalogs-a-string": ('model = "llama-3.1-8b"\ncatalogs = "x.toml"\n' + CLASS, "catalogs must be a list"),
    "model-config-a-number": ("model_config = 5\n" + CLASS, "model_config must be a path"),
    "no-class": ('model = "llama-3.1-8b"\ngpus = ["h100-sxm"]\n', "no [[class]]"),
    "class-not-tables": ('model = "llama-3.1-8b"\nclass = 5\n', "'class' must be an array of tables"),
    "boolean-as-number": ('model = "llama-3.1-8b"\n[[class]]\nconcurrency = true\n',
                          "[[class]] #1 concurrency = true: expected a number"),
    "number-as-string": ('model = "llama-3.1-8b"\n[[class]]\nconcurrency = "4"\n',
                         "[[class]] #1 concurrency = '4': expected a number, got the string"),
    "typo": ('model = "llama-3.1-8b"\n[[class]]\nname = "chat"\nconcurency = 4\n',
             "[[class]] #1 (chat) concurency: unknown field 'concurency' (did you mean 'concurrency'?)"),
    "price-inf": ('model = "llama-3.1-8b"\nprices = {"h100-sxm" = inf}\n' + CLASS,
                  "prices.h100-sxm = inf: input should be a finite number"),
    "gpus-a-string": ('model = "llama-3.1-8b"\ngpus = "h100-sxm"\n' + CLASS, "gpus = 'h100-sxm': input should be a list"),
    "batch-huge": ('model = "llama-3.1-8b"\nbatch_sizes = [1, 100000000000]\n' + CLASS, "batch_sizes[1]"),
}


@pytest.mark.parametrize("case", sorted(SCENARIOS))
def test_scenario_file(case, tmp_path, capsys):
    text, expected = SCENARIOS[case]
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    one_error_line(["solve", path, "--no-alternatives"], capsys, f"scenario {path}", expected)


def test_scenario_without_class_takes_the_workload_from_options(tmp_path, capsys):
    path = tmp_path / "scenario.toml"
    path.write_text('model = "llama-3.1-8b"\ngpus = ["h100-sxm"]\n')
    code, lines, out = outcome(["solve", path, "--concurrency", "4", "--no-alternatives", "--json"], capsys)
    assert code == 0, lines
    assert json.loads(out)["replicas"][0]["gpu"] == "h100-sxm"


def test_command_line_errors_name_the_option_not_the_internal_path(capsys):
    line = one_error_line(SOLVE[:-3] + ["--concurrency", "0"], capsys, "--concurrency 0")
    assert "classes.0" not in line and "options:" not in line


# ---------------------------------------------------------------- 5. catalog rows


def catalog_with(old: str, new: str) -> str:
    assert old in MY_GPUS
    return MY_GPUS.replace(old, new)


CATALOG_ROWS = {
    "bandwidth-3350": (("bandwidth_tb_s = 1.792", "bandwidth_tb_s = 3350"),
                       "field 'bandwidth_tb_s': 3350 is outside the plausible range 0 to 100 TB/s per device"),
    "memory-8e10": (("memory_gb = 96", "memory_gb = 8e10"), "field 'memory_gb': 8e+10 is outside"),
    "negative-cc": (("compute_capability = 12.0", "compute_capability = -8.0"), "field 'compute_capability'"),
    "boolean-memory": (("memory_gb = 96", "memory_gb = true"), "field 'memory_gb': expected a number, got true"),
    "number-as-boolean": (('kind = "gpu"', 'kind = "gpu"\nrentable = 1'), "field 'rentable': expected true or false"),
    "typo": (("bandwidth_tb_s = 1.792", "bandwith_tb_s = 1.792"),
             "unknown field 'bandwith_tb_s' (did you mean 'bandwidth_tb_s'?)"),
    "price-inf": (("usd_per_hour = 1.8", "usd_per_hour = inf"), "[[price]] #1 (rtx-pro-6000): field 'usd_per_hour'"),
    "price-huge": (("usd_per_hour = 1.8", "usd_per_hour = 1e300"), "field 'usd_per_hour': 1e+300 is outside"),
    "nan-rate": (("tflops_fp16 = 250.0", "tflops_fp16 = nan"), "field 'tflops_fp16'"),
    "schema-version-true": (("schema_version = 1", "schema_version = true"), "schema_version True is not supported"),
}


@pytest.mark.parametrize("case", sorted(CATALOG_ROWS))
def test_catalog_row(case, tmp_path, capsys):
    (old, new), expected = CATALOG_ROWS[case]
    path = tmp_path / "gpus.toml"
    path.write_text(catalog_with(old, new))
    one_error_line(["list", "gpus", "--catalog", path], capsys, f"--catalog {path}", expected)


def test_two_catalogs_with_one_file_name_in_different_folders(tmp_path, capsys):
    first, second = tmp_path / "a" / "gpus.toml", tmp_path / "b" / "gpus.toml"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_text(MY_GPUS)
    second.write_text(MY_GPUS.replace("rtx-pro-6000", "other-card").replace('"RTX PRO 6000"', '"Other card"'))
    code, lines, out = outcome(["list", "gpus", "--json", "--catalog", first, "--catalog", second], capsys)
    assert code == 0, lines
    ids = {row["id"] for row in json.loads(out)}
    assert {"rtx-pro-6000", "other-card"} <= ids
    code, lines, out = outcome(["plugins", "--json", "--catalog", first, "--catalog", second], capsys)
    names = {p["name"] for p in json.loads(out)["loaded"]}
    assert {"catalog:gpus.toml", f"catalog:{second}"} <= names


def test_one_catalog_named_twice_is_loaded_once(tmp_path, capsys):
    path = tmp_path / "gpus.toml"
    path.write_text(MY_GPUS)
    code, lines, out = outcome(["list", "gpus", "--json", "--catalog", path, "--catalog", path], capsys)
    assert code == 0, lines
    assert [row["id"] for row in json.loads(out)].count("rtx-pro-6000") == 1


def test_unknown_id_list_says_how_many_more(capsys):
    line = one_error_line(["solve", "--model", "zzzz", "--gpu", "h100-sxm"], capsys, "unknown model 'zzzz'; known: ")
    from quantplan.solver.registry import load_world

    shown = line.split("known: ", 1)[1].split(" and ")[0].split(", ")
    more = int(line.rsplit(" and ", 1)[1].split()[0])
    assert len(shown) == 12
    assert len(shown) + more == len(load_world(entry_points=False).models)


# ---------------------------------------------------------------- 6. plugins that break the rules

PLUGIN_MODULE = '''
from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver.terms import Term


class Misspelled:
    @hookimpl
    def quantplan_gpu(self):
        return []


class NotAList:
    @hookimpl
    def quantplan_gpus(self):
        return 5


class WrongRecords:
    @hookimpl
    def quantplan_gpus(self):
        return ["h100"]


class NanStep:
    @hookimpl
    def quantplan_step_terms(self, config, step):
        return [Term("overhead_s", float("nan"), "nan-step", "not a number", step.phase)]


class NegativeStep:
    @hookimpl
    def quantplan_step_terms(self, config, step):
        return [Term("overhead_s", -10.0, "negative-step", "ten seconds back in time", step.phase)]


class StringTerm:
    @hookimpl
    def quantplan_memory_terms(self, config, context_tokens):
        return [Term("weights_bytes", "lots", "string-term", "a string")]


class UnknownQuantity:
    @hookimpl
    def quantplan_cost_terms(self, config, prices):
        return [Term("usd_per_year", 1.0, "unknown-quantity", "not a quantity")]


class Raises:
    @hookimpl
    def quantplan_cost_terms(self, config, prices):
        raise RuntimeError("boom")


class JunkScheduling:
    @hookimpl
    def quantplan_scheduling(self, config):
        return 42


class JunkIncompatibility:
    @hookimpl
    def quantplan_incompatibility(self, config):
        return 7


class JunkExecution:
    @hookimpl
    def quantplan_execution(self, method, gpu, framework):
        return "yes"


class WrongArgument:
    @hookimpl
    def quantplan_step_terms(self, config, stepp):
        return []


class FewerArguments:
    """pluggy lets an implementation take fewer arguments than the spec: this one is fine."""

    @hookimpl
    def quantplan_cost_terms(self, config):
        return []
'''

BROKEN_PLUGINS = {
    "Misspelled": "unknown hook 'quantplan_gpu' (did you mean 'quantplan_gpus'?)",
    "NotAList": "quantplan_gpus returned an int; expected a list of GPUSpec",
    "WrongRecords": "quantplan_gpus returned a list holding a str; expected GPUSpec",
    "NanStep": "quantplan_step_terms returned overhead_s = nan (not finite)",
    "NegativeStep": "quantplan_step_terms returned overhead_s = -10 (negative)",
    "StringTerm": "quantplan_memory_terms returned weights_bytes = a str (not a number)",
    "UnknownQuantity": "quantplan_cost_terms returned a term of unknown quantity 'usd_per_year'",
    "Raises": "quantplan_cost_terms raised RuntimeError: boom",
    "JunkScheduling": "quantplan_scheduling returned an int; expected Scheduling or None",
    "JunkIncompatibility": "quantplan_incompatibility returned an int; expected a list of strings",
    "JunkExecution": "quantplan_execution returned a str; expected Execution or None",
    "WrongArgument": "Argument(s) {'stepp'} are declared in the hookimpl but can not be found in the hookspec",
}


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install entry points (group 'quantplan') of a fake distribution 'fake-plugins 1.0' from PLUGIN_MODULE."""
    module = "quantplan_test_broken_plugins"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
    (tmp_path / "failing_import.py").write_text('raise ImportError("needs libmissing.so")\n')
    info = tmp_path / "fake_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
    monkeypatch.delenv(STRICT_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(*names: str) -> None:
        lines = [f"{n} = {module}:{n}" if n != "failing-import" else "failing-import = failing_import"
                 for n in names]
        (info / "entry_points.txt").write_text("[quantplan]\n" + "\n".join(lines) + "\n")
        importlib.invalidate_caches()

    yield install
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


_reference: dict[str, dict] = {}


def reference_plan(capsys) -> dict:
    if "plan" not in _reference:
        code, lines, out = outcome(SOLVE + ["--json"], capsys)
        assert code == 0 and lines == []
        _reference["plan"] = json.loads(out)
    return _reference["plan"]


@pytest.mark.parametrize("name", sorted(BROKEN_PLUGINS))
def test_broken_plugin_is_dropped_named_once_and_changes_nothing(name, installed, capsys):
    expected_plan = reference_plan(capsys)
    installed(name)
    code, lines, out = outcome(SOLVE + ["--json"], capsys)
    assert code == 0, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: plugin {name!r} (fake-plugins 1.0) failed: "), lines[0]
    assert BROKEN_PLUGINS[name] in lines[0]
    plan = json.loads(out)
    assert plan["cost_per_hour"] == expected_plan["cost_per_hour"]
    assert [(r["ttft_ms"], r["tpot_ms"]) for r in plan["replicas"]] == [
        (r["ttft_ms"], r["tpot_ms"]) for r in expected_plan["replicas"]]


def test_plugin_taking_fewer_arguments_is_fine(installed, capsys):
    installed("FewerArguments")
    code, lines, out = outcome(SOLVE + ["--json"], capsys)
    assert code == 0 and lines == []
    assert json.loads(out)["cost_per_hour"] == reference_plan(capsys)["cost_per_hour"]


@pytest.mark.parametrize("argv", [
    ["list", "gpus"], ["list", "models", "--json"], ["plugins"], SOLVE, ESTIMATE + ["--json"],
    ["memory", "--model", "llama-2-7b", "--gpu", "a100-80gb"],
    ["solve", "--model", "zzzz", "--gpu", "h100-sxm"],  # bad input too: the warning, then the one error line
])
def test_plugin_that_fails_to_import_is_named_by_every_command_once(argv, installed, capsys):
    installed("failing-import")
    code, lines, out = outcome(argv, capsys)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == ["warning: plugin 'failing-import' (fake-plugins 1.0) failed: "
                        "ImportError: needs libmissing.so"]
    assert code == (2 if "zzzz" in argv else 0)
    assert all(line.startswith(("warning: ", "error: ")) for line in lines)


def test_strict_mode_makes_a_junk_answer_fatal(installed, capsys, monkeypatch):
    installed("NegativeStep")
    monkeypatch.setenv(STRICT_ENV, "1")
    one_error_line(SOLVE, capsys, "plugin 'NegativeStep'", "overhead_s = -10 (negative)")


def test_plugin_results_checked_in_the_api_too():
    """The same rules hold without the command line: a junk plugin registered in code is dropped."""
    from quantplan.plugins.hookspecs import hookimpl
    from quantplan.plugins.manager import make_plugin_set
    from quantplan.solver.api import estimate
    from quantplan.solver.registry import build_world
    from quantplan.solver.terms import Term

    class NegativeBandwidth:
        name = "negative-bandwidth"

        @hookimpl
        def quantplan_step_terms(self, config, step):
            return [Term("bandwidth_efficiency", -1.0, self.name, "negative share", step.phase)]

    plugins = make_plugin_set(extra=[NegativeBandwidth()], entry_points=False, strict=False)
    world = build_world(plugins)
    result = estimate("llama-3.1-8b", "fp16", "h100-sxm", "vllm", world=world)
    plain = estimate("llama-3.1-8b", "fp16", "h100-sxm", "vllm",
                     world=build_world(make_plugin_set(entry_points=False)))
    assert result.tpot_ms == plain.tpot_ms > 0
    assert [(f.name, f.error) for f in plugins.failures] == [
        ("negative-bandwidth", "quantplan_step_terms returned bandwidth_efficiency = -1 (not above zero) "
                               "('negative share')")]
    take_failures()


def test_failure_lines_are_one_line():
    from quantplan.plugins.manager import PluginFailure

    failure = PluginFailure("p", "dist", "1.0", "PluginValidationError: first line\nsecond line")
    assert failure.line() == "plugin 'p' (dist 1.0) failed: PluginValidationError: first line second line"


def test_deeply_nested_junk_in_a_scenario_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "scenario.toml"
    path.write_text('model = "llama-3.1-8b"\n' + textwrap.dedent('''
        [[class]]
        concurrency = 4
        ttft_ms = [[[[1]]]]
    '''))
    one_error_line(["solve", path], capsys, "[[class]] #1 ttft_ms")
