"""Commands import only what they use: `estimate` never builds an integer program, so it never imports PuLP."""

from __future__ import annotations

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
