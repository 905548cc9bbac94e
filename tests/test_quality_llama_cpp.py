"""`quantplan quality` end to end against real llama.cpp servers: a tiny random-weight GGUF written by
tests/tiny_gguf.py in F16, quantized by llama.cpp's own llama-quantize to Q8_0 and Q4_0, each served by
llama-server on 127.0.0.1.

Needs llama-server and llama-quantize: in $QUANTPLAN_LLAMA_CPP_BIN or on PATH (`.ci/llama_cpp.sh` builds
them from the llama.cpp source vendored in PyPI's llama-cpp-python sdist). Without them the tests are
skipped with that reason; QUANTPLAN_REQUIRE_LLAMA_CPP=1 (set by CI) turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import tiny_gguf
from quantplan.cli import cli


def _binary(name: str) -> str | None:
    folder = os.environ.get("QUANTPLAN_LLAMA_CPP_BIN")
    if folder and (Path(folder) / name).is_file():
        return str(Path(folder) / name)
    return shutil.which(name)


SERVER, QUANTIZE = _binary("llama-server"), _binary("llama-quantize")
MISSING = [name for name, path in (("llama-server", SERVER), ("llama-quantize", QUANTIZE)) if path is None]
if MISSING and os.environ.get("QUANTPLAN_REQUIRE_LLAMA_CPP") == "1":
    raise RuntimeError(f"QUANTPLAN_REQUIRE_LLAMA_CPP=1 but {', '.join(MISSING)} not found "
                       f"(QUANTPLAN_LLAMA_CPP_BIN or PATH)")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"llama.cpp not built here: {', '.join(MISSING)} not found "
                                                     f"in $QUANTPLAN_LLAMA_CPP_BIN or on PATH (.ci/llama_cpp.sh)")

WORDS = ("the model reads a short line of text and then predicts what comes next in the line while the "
         "server keeps every token it has seen in its cache").split()
DOCUMENTS = 8
WORDS_PER_DOCUMENT = 10
MAX_TOKENS = 40  # per document: each scored position is one request to llama-server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One llama-server process on 127.0.0.1, stopped by stop()."""

    def __init__(self, model: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [SERVER, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-c", "512", "-np", "1",
             "-t", "2", "--alias", model.stem],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}: see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy in 60 s: see {log}")

    def stop(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log.close()
        return code


def _tokenize(url: str, text: str) -> list[int]:
    request = urllib.request.Request(f"{url}/tokenize", json.dumps({"content": text.strip(), "add_special": True})
                                     .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["tokens"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    f16 = tiny_gguf.write(folder / "tiny-f16.gguf")
    made = {"f16": f16}
    for kind in ("Q8_0", "Q4_0"):
        out = folder / f"tiny-{kind.lower()}.gguf"
        done = subprocess.run([QUANTIZE, str(f16), str(out), kind], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        made[kind.lower()] = out
    return made


@pytest.fixture(scope="module")
def measured(models, tmp_path_factory):
    """Each candidate (F16 again, Q8_0, Q4_0) against the F16 baseline; every server stopped afterwards."""
    folder = tmp_path_factory.mktemp("runs")
    data = folder / "text.txt"
    data.write_text("\n\n".join(" ".join(WORDS[(d * 5 + i) % len(WORDS)] for i in range(WORDS_PER_DOCUMENT))
                                for d in range(DOCUMENTS)) + "\n")
    results, servers = {}, []
    try:
        baseline = Server(models["f16"], folder / "baseline.log")
        servers.append(baseline)
        results["expected_tokens"] = sum(min(len(_tokenize(baseline.url, text)), MAX_TOKENS) - 1
                                         for text in data.read_text().split("\n\n"))
        for kind in ("f16", "q8_0", "q4_0"):
            candidate = Server(models[kind], folder / f"{kind}.log")
            servers.append(candidate)
            result = CliRunner().invoke(cli, ["quality", "--baseline", baseline.url, "--candidate", candidate.url,
                                              "--data", str(data), "--top-k", "20", "--json",
                                              "--max-tokens-per-doc", str(MAX_TOKENS),
                                              "-o", str(folder / f"{kind}.json")])
            assert result.exit_code == 0, (result.output, result.stderr)
            results[kind] = json.loads(result.stdout)
            assert candidate.stop() is not None
    finally:
        codes = [server.stop() if server.process.poll() is None else server.process.returncode for server in servers]
    results["exit_codes"] = codes
    results["processes"] = [server.process for server in servers]
    return results


def test_the_engine_is_llama_cpp_and_every_token_is_scored(measured):
    summary = measured["f16"]["summary"]
    assert measured["f16"]["baseline"]["engine"] == "llama.cpp"
    assert summary["documents"] == DOCUMENTS and summary["tokens"] == measured["expected_tokens"]


def test_kl_of_f16_against_itself_is_zero_within_noise(measured):
    summary = measured["f16"]["summary"]
    assert abs(summary["kl_divergence"]) < 1e-6
    assert abs(summary["ppl_delta_pct"]) < 1e-3
    assert summary["top1_agreement"] == 1.0


def test_q8_0_loses_less_than_q4_0(measured):
    """KL and the size of the perplexity change are ordered F16 < Q8_0 < Q4_0 (random weights: the change
    can go either way, its size cannot)."""
    q8, q4 = measured["q8_0"]["summary"], measured["q4_0"]["summary"]
    assert 1e-6 < q8["kl_divergence"] < q4["kl_divergence"]
    assert abs(q8["ppl_delta"]) < abs(q4["ppl_delta"])


def test_verdicts_follow_the_thresholds(measured):
    for kind in ("f16", "q8_0", "q4_0"):
        summary = measured[kind]["summary"]
        for verdict in summary["verdicts"].values():
            assert verdict["pass"] == (summary["ppl_delta"] < verdict["max_ppl_delta"]
                                       and summary["kl_divergence"] < verdict["max_kl_divergence"])
    assert all(v["pass"] for v in measured["f16"]["summary"]["verdicts"].values())


def test_servers_are_stopped_afterwards(measured):
    assert all(process.poll() is not None for process in measured["processes"])


PERPLEXITY = _binary("llama-perplexity")


@pytest.mark.skipif(PERPLEXITY is None, reason="llama-perplexity not built here")
def test_reads_a_real_llama_perplexity_kl_divergence_log(models, tmp_path):
    """llama-perplexity's own log (F16 logits saved, then Q4_0 against them) read by --from-llama-perplexity:
    the figures are the ones the log prints. One CI run got a log without its summary lines from a run that
    exited 0; what this test checks is how quantplan reads a finished log, so the pair of runs is repeated
    (at most three times) until the log has its summary."""
    text = tmp_path / "text.txt"
    text.write_text(" ".join(WORDS[(i * 7) % len(WORDS)] for i in range(300)))
    log = tmp_path / "q4.log"
    for attempt in range(3):
        base = tmp_path / f"base-{attempt}.kld"
        for argv in ([str(models["f16"]), "-f", str(text)], [str(models["q4_0"]), "--kl-divergence"]):
            done = subprocess.run([PERPLEXITY, "-m", *argv, "-c", "128", "-t", "2", "--kl-divergence-base",
                                   str(base)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-2000:]
        log.write_text(done.stdout + done.stderr)
        if "Mean PPL(Q)" in log.read_text() and "Mean    KLD:" in log.read_text():
            break
    else:
        pytest.fail("three llama-perplexity --kl-divergence runs ended without their summary:\n"
                    + log.read_text()[-2000:])
    printed = {line.split(":", 1)[0].strip(): float(line.split(":", 1)[1].split("±")[0])
               for line in log.read_text().splitlines() if line.startswith(("Mean PPL(Q) ", "Mean    KLD:"))}
    result = CliRunner().invoke(cli, ["quality", "--from-llama-perplexity", str(log), "-o", str(tmp_path / "r.json"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["ppl_candidate"] == printed["Mean PPL(Q)"]
    assert summary["kl_divergence"] == printed["Mean    KLD"] > 0
