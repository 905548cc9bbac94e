"""quantplan traffic: classes, rates and burstiness from a request log, as a scenario file."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quantplan.cli import cli
from quantplan.solver.scenario import load_scenario
from quantplan.solver.traffic import profile, read_log

CSV = ("timestamp,prompt_tokens,completion_tokens\n"
       "0,100,50\n1,4000,400\n2,100,50\n3,4000,400\n4,100,50\n5,4000,400\n")


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_two_length_clusters_with_their_rates(tmp_path):
    """Six requests over 5 s, alternating 100 + 50 and 4000 + 400 tokens: two classes of 3 requests,
    each 3 / 5 s = 0.6 requests/s; the short class arrives every 2 s exactly (inter-arrival CV 0); the
    log is shorter than a minute, so the busiest window is the whole log (0.6/s)."""
    short, long_ = profile(read_log(_write(tmp_path, "log.csv", CSV)))
    assert (short.name, short.prompt_tokens, short.output_tokens, short.requests) == ("p100-o50", 100, 50, 3)
    assert (long_.name, long_.prompt_tokens, long_.output_tokens, long_.requests) == ("p4000-o400", 4000, 400, 3)
    for c in (short, long_):
        assert c.share == 0.5 and c.rate_per_s == pytest.approx(0.6) and c.peak_rate_per_s == pytest.approx(0.6)
        assert c.interarrival_cv == pytest.approx(0.0)


def test_epoch_milliseconds_give_the_same_rates_as_seconds(tmp_path):
    """The six requests of CSV at epoch 1,733,200,000 s written in milliseconds: still 0.6 requests/s."""
    start = 1_733_200_000_000
    rows = CSV.splitlines()
    text = "\n".join([rows[0]] + [f"{start + int(r.split(',')[0]) * 1000},{r.split(',', 1)[1]}" for r in rows[1:]])
    short, long_ = profile(read_log(_write(tmp_path, "log.csv", text + "\n")))
    assert short.rate_per_s == pytest.approx(0.6) and long_.rate_per_s == pytest.approx(0.6)


def test_openai_usage_jsonl_with_iso_times(tmp_path):
    """OpenAI-compatible records (usage.prompt_tokens / completion_tokens) with ISO 8601 times: one class
    of similar requests, 4 requests over 30 s = 0.1333/s; lengths are the means (200, 101)."""
    lines = [{"created": f"2025-01-01T00:00:{s:02d}Z", "usage": {"prompt_tokens": p, "completion_tokens": o}}
             for s, p, o in ((0, 190, 100), (10, 210, 102), (20, 200, 101), (30, 200, 101))]
    [only] = profile(read_log(_write(tmp_path, "log.jsonl", "\n".join(json.dumps(x) for x in lines))))
    assert (only.prompt_tokens, only.output_tokens, only.requests) == (200, 101, 4)
    assert only.rate_per_s == pytest.approx(4 / 30)


def test_scenario_file_loads_and_is_deterministic(tmp_path):
    path = _write(tmp_path, "log.csv", CSV)
    out = tmp_path / "scenario.toml"
    runner = CliRunner()
    first = runner.invoke(cli, ["traffic", path, "--model", "llama-3.1-8b", "-o", str(out)])
    assert first.exit_code == 0, first.output
    text = out.read_text()
    assert runner.invoke(cli, ["traffic", path, "--model", "llama-3.1-8b"]).output.rstrip("\n") == text.rstrip("\n")
    scenario = load_scenario(str(out))
    assert scenario.model == "llama-3.1-8b"
    assert [(k.name, k.prompt_tokens, k.output_tokens, k.rate_per_s) for k in scenario.classes] == [
        ("p100-o50", 100, 50, 0.6), ("p4000-o400", 4000, 400, 0.6)]


@pytest.mark.parametrize("text, message", [
    ("timestamp,prompt_tokens\n0,100\n1,200\n", "log.csv:2: no output token field"),
    ("timestamp,prompt_tokens,output_tokens\n0,100,x\n1,200,5\n", "log.csv:2: output_tokens 'x' is not a number"),
    ("timestamp,prompt_tokens,output_tokens\nnoon,100,5\n1,200,5\n", "is neither seconds nor ISO 8601"),
    ("timestamp,prompt_tokens,output_tokens\n0,100,5\n", "at least 2"),
    ("timestamp,prompt_tokens,output_tokens\n7,100,5\n7,200,5\n", "same time"),
    ('{"created": 1, "usage": {"prompt_tokens": 5, "completion_tokens": 5}}\n{oops\n', "log.csv:2: not JSON"),
])
def test_bad_logs_name_the_line_and_field(tmp_path, text, message):
    result = CliRunner().invoke(cli, ["traffic", _write(tmp_path, "log.csv", text)])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_log_exits_2():
    result = CliRunner().invoke(cli, ["traffic", "/nonexistent/requests.jsonl"])
    assert result.exit_code == 2 and "/nonexistent/requests.jsonl" in result.stderr


def test_the_written_scenario_solves(tmp_path):
    """traffic -> solve: the scenario written for the two-cluster log plans both classes (one L40S type)."""
    log = _write(tmp_path, "log.csv", CSV)
    scenario = tmp_path / "traffic.toml"
    written = CliRunner().invoke(cli, ["traffic", log, "--model", "llama-3.1-8b", "-o", str(scenario)])
    assert written.exit_code == 0, written.output
    solved = CliRunner().invoke(cli, ["solve", str(scenario), "--gpu", "l40s", "--no-alternatives", "--json"])
    assert solved.exit_code == 0, solved.output
    plan = json.loads(solved.stdout)
    served = {c["name"] for g in plan["replicas"] for c in g["classes"]}
    assert served == {"p100-o50", "p4000-o400"}
