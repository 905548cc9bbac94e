"""Human output an engineer reads: the workload first, why the plan won, labels, widths."""

from __future__ import annotations

from click.testing import CliRunner

from quantplan.cli import cli


def human(*argv: str, width: int = 100) -> str:
    result = CliRunner().invoke(cli, list(argv), env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_plan_starts_with_the_workload_and_says_why_it_won():
    text = human("solve", "examples/chat-7b-a100.toml")
    lines = text.splitlines()
    assert lines[0].startswith("Workload: llama-2-7b, class chat: 8 concurrent users")
    assert "TTFT <= 150 ms" in text and "TPOT <= 25 ms" in text
    assert any(line.startswith("Why this plan: the cheapest that meets every SLO and quality floor") for line in lines)


def test_human_output_fits_the_terminal_width():
    for width in (80, 120):
        text = human("solve", "examples/chat-7b-a100.toml", "--no-alternatives", width=width)
        assert max(len(line) for line in text.splitlines()) <= width


def test_consumer_and_extrapolated_groups_are_labelled():
    # TensorRT-LLM on two RTX 4090s: its consumer rows (one RTX 3090, held out) are all on one GPU
    text = human("solve", "--model", "llama-3.1-70b", "--concurrency", "4", "--gpu", "rtx4090", "--method",
                 "awq-int4", "--framework", "tensorrt-llm", "--max-gpus", "2", "--no-alternatives", width=200)
    assert "(consumer)" in text and "(extrapolated)" in text
    assert "include the p90 validation error" in text


def test_replica_groups_on_one_device_and_method_print_their_quality_once():
    # 405B at 2 req/s on MI300X FP8 vLLM: a 4-GPU and an 8-GPU replica (checked in the JSON), one quality
    text = human("solve", "--model", "llama-3.1-405b", "--rate", "2", "--prompt-tokens", "2000", "--output-tokens",
                 "400", "--ttft-ms", "3000", "--tpot-ms", "60", "--use-case", "chat_general", "--no-alternatives",
                 "--gpu", "mi300x", "--method", "fp8", "--framework", "vllm", width=200)
    assert "4x mi300x fp8 vllm" in text and "8x mi300x fp8 vllm" in text
    assert sum(line.startswith("Quality (mi300x/fp8)") for line in text.splitlines()) == 1
