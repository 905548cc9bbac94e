"""Commands import only what they use: `estimate` never builds an integer program, so it never imports PuLP."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_estimate_does_not_import_pulp():
    script = ("import sys\n"
              "from quantplan.solver.api import estimate\n"
              "estimate(model='llama-3.1-8b', method='fp8', gpu='h100-sxm', framework='vllm', batch=8)\n"
              "print('pulp' in sys.modules, 'highspy' in sys.modules)\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["False", "False"]


def test_program_still_solves_after_the_late_import():
    """The first use of `pulp` inside solver/program.py imports it (a plan is still found)."""
    script = ("import sys\n"
              "from quantplan.solver.api import solve\n"
              "assert 'pulp' not in sys.modules\n"
              "plan = solve({'model': 'llama-3.1-8b', 'gpus': ['l40s'], 'max_gpus': 1, 'alternatives': False,\n"
              "              'classes': [{'name': 'chat', 'prompt_tokens': 512, 'output_tokens': 128,\n"
              "                           'concurrency': 4, 'ttft_ms': 2000, 'tpot_ms': 100}]})\n"
              "print(plan.status, 'pulp' in sys.modules)\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["optimal", "True"]


# --- The light commands, as whole processes: what each one imports ------------------------------------

# Libraries no light command uses: the integer program's (PuLP, HiGHS), fitting's (SciPy), plotting's.
NEVER_LIGHT = ("pulp", "highspy", "scipy", "matplotlib")

# The command as `quantplan ARGV` runs it (its output on stdout), then the modules it imported on stderr.
_RUN_AND_LIST = ("import json, sys\n"
                 "from quantplan.cli import main\n"
                 "code = main(sys.argv[1:])\n"
                 "sys.stdout.flush()\n"
                 "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
                 "sys.exit(code)\n")


def _imported(*argv: str) -> tuple[int, str, set[str]]:
    """Run `quantplan ARGV` in a fresh interpreter: its exit code, its output and every module it imported."""
    wide = dict(os.environ, COLUMNS="200")  # tables wide enough to show whole ids
    found = subprocess.run([sys.executable, "-c", _RUN_AND_LIST, *argv], capture_output=True, text=True, env=wide)
    return found.returncode, found.stdout, set(json.loads(found.stderr.splitlines()[-1]))


def test_help_imports_neither_the_solver_nor_its_libraries():
    code, output, modules = _imported("--help")
    assert code == 0 and "Commands:" in output
    assert "click" in modules
    for name in (*NEVER_LIGHT, "numpy", "pydantic", "rich", "pluggy", "quantplan.solver.api",
                 "quantplan.plugins.manager"):
        assert name not in modules, name


def test_list_gpus_imports_no_numpy_and_no_serving_model():
    """Listing devices reads the catalogs (pydantic records, the plugins) and draws a table (rich); it
    evaluates no configuration, so neither numpy nor the serving model nor the solver is imported."""
    code, output, modules = _imported("list", "gpus")
    assert code == 0 and "h100-sxm" in output
    assert {"pydantic", "pluggy", "rich.table", "quantplan.solver.registry"} <= modules
    for name in (*NEVER_LIGHT, "numpy", "quantplan.solver.serving", "quantplan.solver.api",
                 "quantplan.solver.program", "quantplan.solver.scenario"):
        assert name not in modules, name


def test_json_output_imports_no_rich():
    code, output, modules = _imported("list", "gpus", "--json")
    assert code == 0
    assert "h100-sxm" in {row["id"] for row in json.loads(output)}
    for name in (*NEVER_LIGHT, "numpy", "rich"):
        assert name not in modules, name


def test_plugins_imports_no_numpy():
    code, output, modules = _imported("plugins", "--json")
    assert code == 0
    assert "amd-gpus" in {row["name"] for row in json.loads(output)["loaded"]}
    for name in (*NEVER_LIGHT, "numpy", "rich", "quantplan.solver.serving", "quantplan.solver.api"):
        assert name not in modules, name


def test_estimate_imports_no_program_libraries():
    """`estimate` evaluates one configuration with the serving model (numpy) and prints a table (rich);
    it builds no integer program and fits nothing."""
    code, output, modules = _imported("estimate", "--model", "llama-3.1-8b", "--method", "fp8", "--gpu", "h100-sxm",
                                      "--framework", "vllm", "--concurrency", "8")
    assert code == 0 and "h100-sxm" in output
    assert {"numpy", "rich.table", "quantplan.solver.serving", "quantplan.solver.estimate"} <= modules
    for name in (*NEVER_LIGHT, "quantplan.solver.api", "quantplan.solver.program", "quantplan.solver.plan",
                 "quantplan.solver.explain"):  # the planner's modules (about 0.17 s of imports)
        assert name not in modules, name


def test_terms_holding_arrays_are_still_checked_once_numpy_is_loaded():
    """plugins/results.py no longer imports numpy itself: an array term (which only a process that imported
    numpy can hold) is still checked for values below zero and values that are not finite."""
    import numpy as np
    from quantplan.plugins.results import problem_with
    from quantplan.solver.terms import OVERHEAD, Term

    def problem(value) -> str | None:
        return problem_with("quantplan_step_terms", [Term(OVERHEAD, value, "test", "an array of overheads")])

    assert problem(np.array([0.5, 1.0])) is None
    assert problem(np.float32(0.5)) is None
    assert "values below zero" in problem(np.array([0.5, -1.0]))
    assert "not finite" in problem(np.array([0.5, np.nan]))
