"""Read benchmark results in the formats the tools write, as measured figures at one load and length.

Field names follow each tool's own documentation or source (the files themselves are the user's):

- `vllm bench serve --save-result` (vllm/benchmarks/serve.py; docs.vllm.ai "vllm bench serve"): one
  JSON object with `request_rate` (a number or "inf"), `max_concurrency` (null when unset),
  `num_prompts`, `completed`, `total_input_tokens`, `total_output_tokens`, `output_throughput`
  (output tokens/s) and, per metric `ttft`, `tpot`, `itl`, `e2el`: `mean_<m>_ms`, `median_<m>_ms`,
  `std_<m>_ms` and `p<P>_<m>_ms` for each `--metric-percentiles` P (default 99); `model_id`. A finite
  `request_rate` is read as Poisson arrivals (a `max_concurrency` cap beside it is not modelled), else
  `max_concurrency` clients in a closed loop of `num_prompts / max_concurrency` requests each, else
  (rate inf, no cap) every prompt sent at once: as many clients as prompts, one request each.
- SGLang `python -m sglang.bench_serving --output-file F.jsonl` (python/sglang/bench_serving.py,
  docs/developer_guide/bench_serving.md "JSONL output format"): one object appended per run with the
  same names (`request_rate`, `max_concurrency`, `completed`, `total_input_tokens`,
  `total_output_tokens`, `output_throughput`, `mean_ttft_ms`, `median_ttft_ms`, `p99_ttft_ms`,
  `mean_tpot_ms`, ...) plus `random_input_len`, `random_output_len` and
  `total_output_tokens_retokenized`.
- AIPerf `profile_export_aiperf.json` (docs.nvidia.com/aiperf "profile_export_aiperf.json Schema" and
  "Working with Profile Export Files"): top-level metric blocks `time_to_first_token`,
  `inter_token_latency` (= TPOT: the mean gap after the first token), `output_token_throughput`,
  `input_sequence_length`, `output_sequence_length`, `request_count`, each with `unit`, `avg` and
  percentiles `p50`, `p90`, `p99`; the load under `input_config.loadgen` (`concurrency`,
  `request_rate`). genai-perf's `profile_export_genai_perf.json` uses the same metric blocks, with the
  load among its command-line arguments in `input_config` itself (`concurrency`, `request_rate`). The CSV export (`profile_export_aiperf.csv`) has rows
  `Metric,avg,min,max,...,p50,...,p90,...,p99,std` ("Time to First Token (ms)", "Inter Token Latency
  (ms)", "Input/Output Sequence Length (tokens)") and `Metric,Value` rows ("Output Token Throughput
  (tokens/sec)", "Request Count") and no load: `--concurrency` or `--rate` gives it.
- `llama-bench -o json|jsonl|csv` (ggml-org/llama.cpp tools/llama-bench/README.md "Output formats"):
  one record per test with `n_prompt`, `n_gen`, `n_depth`, `avg_ts` (tokens/s), `type_k`,
  `n_gpu_layers`, `model_type`. A `pp` test (n_gen 0) is prompt tokens/s, a `tg` test (n_prompt 0)
  one stream's decode tokens/s at `n_depth` tokens of context; a combined `pg` test mixes both and is
  left out.
- `trtllm-bench throughput --report_json F` (TensorRT-LLM tensorrt_llm/bench/dataclasses/reporting.py,
  `get_statistics_dict`): `request_info` (`num_requests`, `avg_num_concurrent_requests`,
  `avg_input_length`, `avg_output_length`), `performance` (`system_output_throughput_tok_s`),
  `streaming_metrics` (`avg_ttft_ms`, `avg_tpot_ms`) and `world_info.tp_size`. It is an offline
  run with no API server: read as a steady batch of the average concurrent requests; its TTFT, which
  includes the wait of a whole dataset issued at once, is not used.

Bad input ends in one line naming the file and the field (QuantplanError).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import QuantplanError

STATISTICS = {"mean": "mean", "median": "p50", "p50": "p50", "p90": "p90", "p99": "p99"}
KV_NAMES = {"f16": "fp16", "bf16": "bf16", "q8_0": "q8_0", "q4_0": "q4_0"}


@dataclass(frozen=True)
class Measurement:
    """One benchmark run: its load, lengths and the figures measured there."""

    file: str
    tool: str
    mode: str  # "concurrency", "rate", "single" (one stream, no server) or "lockstep" (offline batch)
    load: float  # clients, requests/s, or the batch of an offline run
    prompt_tokens: int
    output_tokens: int
    figures: tuple[tuple[str, str, float], ...]  # (metric, statistic, value)
    requests_per_client: float | None = None
    model: str = ""  # as the file names it
    gpus: int | None = None
    kv_cache_dtype: str | None = None
    gpu_layers: int | None = None
    where: str = ""  # the record inside the file (JSONL line, CSV row)

    @property
    def label(self) -> str:
        return f"{self.file}{self.where}"


@dataclass(frozen=True)
class Skipped:
    label: str
    reason: str


@dataclass
class Results:
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def read(paths, concurrency: float | None = None, rate: float | None = None) -> Results:
    """Every measurement in `paths`; `concurrency` / `rate` stand in for files that record no load."""
    found = Results()
    for path in paths:
        _read_one(Path(path), found, (concurrency, rate))
    return found


def _read_one(path: Path, found: Results, load) -> None:
    label = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise QuantplanError(f"{label}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise QuantplanError(f"{label}: cannot read: {error}") from None
    if path.suffix.lower() == ".csv":
        return _csv(label, text, found, load)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise QuantplanError(f"{label}: not valid JSON (line {error.lineno}: {error.msg})") from None
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((f":{number}", json.loads(line)))
                except json.JSONDecodeError as inner:
                    raise QuantplanError(f"{label}:{number}: not valid JSON ({inner.msg})") from None
        for where, record in records:
            _record(label, where, record, found, load)
        return
    if isinstance(document, list):
        for index, record in enumerate(document):
            _record(label, f"[{index}]", record, found, load)
    else:
        _record(label, "", document, found, load)


def _record(label: str, where: str, record, found: Results, load) -> None:
    name = f"{label}{where}"
    if not isinstance(record, dict):
        raise QuantplanError(f"{name}: expected a JSON object, found {type(record).__name__}")
    if "n_prompt" in record and "avg_ts" in record:
        return _llama_bench(label, where, record, found)
    if isinstance(record.get("performance"), dict) and isinstance(record.get("request_info"), dict):
        found.measurements.append(_trtllm_bench(label, where, record))
        return
    if any(isinstance(record.get(k), dict) for k in ("time_to_first_token", "inter_token_latency")):
        found.measurements.append(_aiperf_json(label, where, record, load))
        return
    if any(f"{s}_{m}_ms" in record for s in ("mean", "median") for m in ("ttft", "tpot")):
        found.measurements.append(_serving(label, where, record))
        return
    raise QuantplanError(f"{name}: unknown result format (expected vllm bench serve, SGLang bench_serving, AIPerf / "
                         f"genai-perf, llama-bench or trtllm-bench output)")


class _Fields:
    """Typed access to one record's fields; errors name the file and the field."""

    def __init__(self, name: str, record: dict) -> None:
        self.name, self.record = name, record

    def number(self, *keys: str, required: bool = True, positive: bool = True) -> float | None:
        value = self.record
        for key in keys:
            if not isinstance(value, dict) or key not in value or value[key] is None:
                if required:
                    raise QuantplanError(f"{self.name}: field '{'.'.join(keys)}' is missing")
                return None
            value = value[key]
        if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
            value = math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise QuantplanError(f"{self.name}: field '{'.'.join(keys)}' is {value!r}, expected a number")
        if positive and not value > 0:
            raise QuantplanError(f"{self.name}: field '{'.'.join(keys)}' is {value!r}, expected a positive number")
        return float(value)


def _figure_list(fields: _Fields, pairs) -> list[tuple[str, str, float]]:
    """The figures present among `pairs` ((keys, metric, statistic)); none at all is an error naming the
    first field looked for."""
    found = []
    for keys, metric, statistic in pairs:
        value = fields.number(*keys, required=False)
        if value is not None and math.isfinite(value):
            found.append((metric, statistic, value))
    if not found:
        raise QuantplanError(f"{fields.name}: field '{'.'.join(pairs[0][0])}' is missing (no TTFT, TPOT or "
                             f"throughput figure to calibrate with)")
    return found


def _serving(label: str, where: str, record: dict) -> Measurement:
    """vllm bench serve (JSON) and SGLang bench_serving (JSONL): the same field names."""
    name = f"{label}{where}"
    fields = _Fields(name, record)
    tool = "sglang bench_serving" if "total_output_tokens_retokenized" in record else "vllm bench serve"
    completed = fields.number("completed")
    prompt = fields.number("total_input_tokens") / completed
    output = fields.number("total_output_tokens") / completed
    pairs = [((f"{stat}_{m}_ms",), metric, STATISTICS[stat]) for m, metric in (("ttft", "ttft_ms"), ("tpot", "tpot_ms"))
             for stat in ("mean", "median", "p90", "p99")]
    figures = _figure_list(fields, pairs + [(("output_throughput",), "output_tokens_per_s", "mean")])
    rate = fields.number("request_rate", required=False)
    concurrency = fields.number("max_concurrency", required=False)
    prompts = fields.number("num_prompts", required=False) or completed
    if rate is not None and math.isfinite(rate):
        mode, load, per_client = "rate", rate, None
    elif concurrency is not None:
        mode, load, per_client = "concurrency", concurrency, prompts / concurrency
    else:  # request_rate inf and no cap: every prompt sent at once, one request per client
        mode, load, per_client = "concurrency", prompts, 1.0
    return Measurement(label, tool, mode, load, max(round(prompt), 1), max(round(output), 1), tuple(figures),
                       per_client, str(record.get("model_id") or ""), where=where)


def _aiperf_load(fields: _Fields, record: dict, load) -> tuple[str, float, float | None]:
    config = record.get("input_config") if isinstance(record.get("input_config"), dict) else {}
    loadgen = config.get("loadgen") if isinstance(config.get("loadgen"), dict) else config
    sub = _Fields(f"{fields.name}: input_config", loadgen)
    rate = sub.number("request_rate", required=False)
    concurrency = sub.number("concurrency", required=False)
    given_concurrency, given_rate = load
    if rate is None and concurrency is None:
        rate, concurrency = given_rate, given_concurrency
    if rate is not None and math.isfinite(rate):
        return "rate", rate, None
    if concurrency is None:
        raise QuantplanError(f"{fields.name}: field 'input_config.loadgen.concurrency' (or request_rate) is missing: "
                             f"give --concurrency or --rate")
    count = fields.number("request_count", "avg", required=False)
    return "concurrency", concurrency, (count / concurrency if count else None)


def _aiperf_json(label: str, where: str, record: dict, load) -> Measurement:
    name = f"{label}{where}"
    fields = _Fields(name, record)
    prompt = fields.number("input_sequence_length", "avg")
    output = fields.number("output_sequence_length", "avg")
    pairs = [((block, stat), metric, STATISTICS["mean" if stat == "avg" else stat])
             for block, metric in (("time_to_first_token", "ttft_ms"), ("inter_token_latency", "tpot_ms"))
             for stat in ("avg", "p50", "p90", "p99")]
    figures = _figure_list(fields, pairs + [(("output_token_throughput", "avg"), "output_tokens_per_s", "mean")])
    mode, value, per_client = _aiperf_load(fields, record, load)
    config = record.get("input_config") if isinstance(record.get("input_config"), dict) else {}
    endpoint = config.get("endpoint") if isinstance(config.get("endpoint"), dict) else {}
    names = endpoint.get("model_names") or config.get("model") or []
    names = [names] if isinstance(names, str) else names
    tool = "aiperf" if "loadgen" in config or not config else "genai-perf"
    return Measurement(label, tool, mode, value, max(round(prompt), 1), max(round(output), 1), tuple(figures),
                       per_client, str(names[0]) if names else "", where=where)


AIPERF_ROWS = {"time to first token": "ttft_ms", "inter token latency": "tpot_ms"}


def _csv(label: str, text: str, found: Results, load) -> None:
    rows = list(csv.reader(text.splitlines()))
    header = next((r for r in rows if r), [])
    if "n_prompt" in header and "avg_ts" in header:
        for index, row in enumerate(csv.DictReader(text.splitlines()), 2):
            record = {k: _csv_value(v) for k, v in row.items() if k is not None}
            _llama_bench(label, f":{index}", record, found)
        return
    if not header or header[0].strip().lower() != "metric":
        raise QuantplanError(f"{label}: unknown CSV format (expected llama-bench -o csv or AIPerf's "
                             f"profile_export_aiperf.csv)")
    record: dict = {}
    columns: list[str] = []
    for row in rows:
        if not row:
            continue
        if row[0].strip().lower() == "metric":
            columns = [c.strip().lower() for c in row]
            continue
        title = row[0].strip().lower()
        values = {c: _csv_value(v) for c, v in zip(columns[1:], row[1:])}
        for prefix, block in (("time to first token", "time_to_first_token"),
                              ("inter token latency", "inter_token_latency"),
                              ("input sequence length", "input_sequence_length"),
                              ("output sequence length", "output_sequence_length")):
            if title.startswith(prefix):
                record[block] = values
        for prefix, block in (("output token throughput (", "output_token_throughput"),
                              ("request count", "request_count")):
            if title.startswith(prefix) and "value" in values:
                record[block] = {"avg": values["value"]}
    if "time_to_first_token" not in record and "inter_token_latency" not in record:
        raise QuantplanError(f"{label}: field 'Time to First Token (ms)' (or 'Inter Token Latency (ms)') is missing")
    found.measurements.append(_aiperf_json(label, "", record, load))


def _csv_value(text):
    if text is None:
        return None
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _llama_bench(label: str, where: str, record: dict, found: Results) -> None:
    name = f"{label}{where}"
    fields = _Fields(name, record)
    prompt = fields.number("n_prompt", positive=False)
    generated = fields.number("n_gen", positive=False)
    depth = fields.number("n_depth", required=False, positive=False) or 0.0
    speed = fields.number("avg_ts")
    layers = fields.number("n_gpu_layers", required=False, positive=False)
    kv = KV_NAMES.get(str(record.get("type_k", "f16")).lower())
    common = dict(model=str(record.get("model_type") or ""), kv_cache_dtype=kv, where=where,
                  gpu_layers=None if layers is None or layers < 0 else int(layers))
    if prompt > 0 and generated == 0:
        found.measurements.append(Measurement(label, "llama-bench", "single", 1.0, int(prompt), 1,
                                              (("prefill_tokens_per_s", "mean", speed),), **common))
    elif generated > 0 and prompt == 0:
        found.measurements.append(Measurement(label, "llama-bench", "single", 1.0, max(int(depth), 1),
                                              int(generated), (("tokens_per_s_per_user", "mean", speed),), **common))
    else:
        found.skipped.append(Skipped(name, f"pp{prompt:g}+tg{generated:g}: a combined test mixes prefill and decode"))


def _trtllm_bench(label: str, where: str, record: dict) -> Measurement:
    name = f"{label}{where}"
    fields = _Fields(name, record)
    concurrent = fields.number("request_info", "avg_num_concurrent_requests")
    prompt = fields.number("request_info", "avg_input_length")
    output = fields.number("request_info", "avg_output_length")
    figures = _figure_list(fields, [(("performance", "system_output_throughput_tok_s"), "output_tokens_per_s", "mean"),
                                    (("streaming_metrics", "avg_tpot_ms"), "tpot_ms", "mean")])
    tp = fields.number("world_info", "tp_size", required=False)
    engine = record.get("engine") if isinstance(record.get("engine"), dict) else {}
    return Measurement(label, "trtllm-bench", "lockstep", float(max(round(concurrent), 1)), max(round(prompt), 1),
                       max(round(output), 1), tuple(figures), None, str(engine.get("model") or ""),
                       gpus=int(tp) if tp else None, where=where)
