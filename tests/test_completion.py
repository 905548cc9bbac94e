"""Shell completion as README documents it: click's `_QUANTPLAN_COMPLETE=bash_source quantplan`."""

from __future__ import annotations

import os
import subprocess
import sys


def complete(variable: str, words: str = "", index: int = 0) -> str:
    env = {**os.environ, "_QUANTPLAN_COMPLETE": variable, "COMP_WORDS": words, "COMP_CWORD": str(index)}
    done = subprocess.run([sys.executable, "-m", "quantplan.cli"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bash_source_defines_the_completion_function():
    script = complete("bash_source")
    assert "_quantplan_completion()" in script
    assert "complete -o nosort -F _quantplan_completion quantplan" in script


def test_bash_completes_commands_and_choices():
    assert complete("bash_complete", "quantplan so", 1).splitlines() == ["plain,solve"]
    assert complete("bash_complete", "quantplan list ", 2).splitlines() == [
        "plain,gpus", "plain,methods", "plain,frameworks", "plain,models"]


def test_zsh_and_fish_sources():
    assert complete("zsh_source").startswith("#compdef quantplan")
    assert "_quantplan_completion" in complete("fish_source")
