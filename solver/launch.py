"""From a plan to running replicas: each group's engine command, checkpoint and SLO benchmark.

Every flag written here is in catalogs/engine_flags.toml (each engine's documented flags at a stated
version); the engine settings are the ones the plan was computed with: running-sequence limit =
the plan's batch, token budget = the engine's default the plan assumed, memory share = the share
quantplan's memory model gave the engine, context = the longest request of the classes served.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .catalog import read_toml
from .errors import QuantplanError
from .plan import ReplicaGroup
from .recipes import TRTLLM_QUANTIZE, Checkpoint, checkpoint_for
from .scenario import TrafficClass
from .specs import MethodSpec, ModelSpec

DEFAULT_CALIBRATION = "calibration.jsonl"


class Program(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    command: str
    version: str
    image: str
    health_path: str
    port: int
    source: str
    container_command: tuple[str, ...] = ()
    flags: tuple[str, ...]
    values: dict[str, tuple[str, ...]] = {}


@lru_cache(maxsize=1)
def programs() -> dict[str, Program]:
    """The engines and benchmark tools with their documented flags (catalogs/engine_flags.toml)."""
    document = read_toml(resources.files("quantplan.catalogs").joinpath("engine_flags.toml"), "engine_flags.toml")
    return {row["id"]: Program(**row) for row in document.get("program", [])}


class Benchmark(BaseModel):
    model_config = ConfigDict(frozen=True)

    traffic_class: str
    command: str  # vllm bench serve
    aiperf_command: str
    slo: dict  # what the plan promises: {statistic, ttft_ms, tpot_ms, predicted_ttft_ms, predicted_tpot_ms}


class Replica(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    framework: str
    gpu: str
    gpus_per_replica: int
    device_kind: str  # gpu, apple or cpu: only GPUs are requested as nvidia.com/gpu
    count: int
    image: str
    container_command: list[str]
    port: int
    health_path: str
    command: str
    args: list[str]  # the command's arguments after the program (what a container runs)
    config_file: str = ""  # TabbyAPI: config.yml text
    checkpoint: Checkpoint
    benchmarks: list[Benchmark]

    @property
    def benchmark_command(self) -> str:
        return self.benchmarks[0].command if self.benchmarks else ""


def read_plan(path: str) -> dict:
    """A `solve --json` plan: one line naming the problem when it is missing, malformed or empty."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise QuantplanError(f"{path}: no such plan file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise QuantplanError(f"{path}: cannot read: {error}") from None
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as error:
        raise QuantplanError(f"{path}: not JSON (line {error.lineno}: {error.msg}); give the output of "
                             f"`quantplan solve --json`") from None
    if not isinstance(plan, dict) or "replicas" not in plan:
        raise QuantplanError(f"{path}: not a plan: no 'replicas' field (give the output of `quantplan solve --json`)")
    if not plan["replicas"]:
        raise QuantplanError(f"{path}: the plan has no replicas (status {plan.get('status', 'unknown')!r})")
    if not plan.get("traffic"):
        raise QuantplanError(f"{path}: the plan has no 'traffic' (made by an older quantplan): run solve again")
    return plan


def launch(plan: dict, world, calibration_data: str = DEFAULT_CALIBRATION,
           model_config: str | None = None) -> list[Replica]:
    """One Replica per replica group of `plan`, in the plan's order; `model_config`: the config.json a
    plan for a model outside the catalog was solved with."""
    try:
        groups = [ReplicaGroup(**group) for group in plan["replicas"]]
        workload = {k.name: k for k in (TrafficClass(**c) for c in plan["traffic"])}
    except (ValidationError, TypeError) as error:
        raise QuantplanError(f"plan: malformed replica group or workload: {_first_error(error)}") from None
    if model_config:
        model = _model(plan, world, model_config)
        return [replica(index, group, model, workload, world, calibration_data, model_config)
                for index, group in enumerate(groups)]
    # each group names its model (a fleet plans several)
    return [replica(index, group, world.models.get(group.model or plan["model"]), workload, world,
                    calibration_data, model_config) for index, group in enumerate(groups)]


def _model(plan: dict, world, model_config: str | None) -> ModelSpec:
    if not model_config:
        return world.models.get(plan["model"])
    from .shapes import model_from_config

    model = model_from_config(model_config)
    if model.id != plan["model"]:
        raise QuantplanError(f"--model-config {model_config}: that is model {model.id!r}; the plan is for "
                             f"{plan['model']!r}")
    return model


def _first_error(error) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(error)


def replica(index: int, group: ReplicaGroup, model: ModelSpec, workload: dict[str, TrafficClass], world,
            calibration_data: str, model_config: str | None = None) -> Replica:
    from .estimate import estimate

    served = [workload[c.name] for c in group.classes if c.name in workload] or list(workload.values())
    context = max(k.context_tokens for k in served)
    longest = max(served, key=lambda k: k.context_tokens)
    method, framework = world.methods.get(group.method), world.frameworks.get(group.framework)
    program = programs()[framework.id]
    guess = estimate(model.id, method.id, group.gpu, framework.id, group.gpus_per_replica, group.batch_size,
                     longest.prompt_tokens, longest.output_tokens, group.kv_cache_dtype, group.gpu_layers,
                     model_config=model_config, world=world)
    budget = int(guess.scheduling.get("token_budget") or framework.max_batched_tokens)
    checkpoint = checkpoint_for(model.id, model.name, method, framework.id, group.kv_cache_dtype, calibration_data)
    settings = Settings(group=group, model=model, method=method, context=context, budget=budget,
                        memory_share=round(1.0 - framework.memory_reserve_fraction, 2), checkpoint=checkpoint,
                        kv_free_fraction=kv_share_of_free_memory(guess, world.gpus.get(group.gpu).usable_gb,
                                                                 group.gpus_per_replica))
    if checkpoint.tool == TRTLLM_QUANTIZE:  # a TensorRT engine: built for this replica's limits
        checkpoint = checkpoint.model_copy(update={"steps": checkpoint.steps + [engine_build(settings, checkpoint)]})
        settings = replace(settings, checkpoint=checkpoint)
    args, config_file = ENGINES[framework.id](settings, program)
    kind = world.gpus.get(group.gpu).kind
    image = program.image.replace(":server-cuda", ":server") if kind == "cpu" else program.image
    name = f"{model.id}-{group.gpu}-{method.id}-{index}".replace(".", "-").replace("_", "-")
    command = program.command + " " + " ".join(shlex.quote(a) for a in args) if args else program.command
    benchmarks = [benchmark(k, figures, checkpoint.path, model.name, program)
                  for k, figures in ((workload[c.name], c) for c in group.classes if c.name in workload)]
    return Replica(name=name, framework=framework.id, gpu=group.gpu, gpus_per_replica=group.gpus_per_replica,
                   device_kind=kind, count=group.count, image=image,
                   container_command=list(program.container_command), port=program.port, health_path=program.health_path,
                   command=command, args=args, config_file=config_file, checkpoint=checkpoint, benchmarks=benchmarks)


@dataclass(frozen=True)
class Settings:
    """What an engine's arguments are made from: the plan's group and the figures derived for it."""

    group: ReplicaGroup
    model: ModelSpec
    method: MethodSpec
    context: int
    budget: int
    memory_share: float
    checkpoint: Checkpoint
    kv_free_fraction: float  # TensorRT-LLM: the KV cache's share of the memory left after weights and runtime


def kv_share_of_free_memory(guess, usable_gb: float, gpus: int) -> float:
    """TensorRT-LLM sizes its KV cache as a fraction of the memory free once weights and runtime are
    placed; the plan gave the engine `available` GB per GPU in all, so the fraction that reproduces it is
    (available - fixed) / (usable - fixed), fixed = weights per GPU + runtime overhead per GPU."""
    fixed = (guess.weights_gb or 0.0) / gpus + (guess.overhead_gb or 0.0)
    available = guess.memory_capacity_gb_per_gpu or usable_gb
    if usable_gb - fixed <= 0:
        return 0.9
    return round(min(max((available - fixed) / (usable_gb - fixed), 0.05), 0.95), 2)


VLLM_QUANTIZATION = {"fp8": "compressed-tensors", "int8-w8a8": "compressed-tensors", "awq-int4": "awq_marlin",
                     "gptq-int4": "gptq_marlin", "gptq-int4-actorder": "gptq", "nvfp4": "modelopt_fp4"}
PUBLIC_QUANTIZATION = {"fp8": "fp8", "awq-int4": "awq_marlin"}  # public checkpoints in their publishers' formats
DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def _quantization(s: Settings) -> str | None:
    if s.method.kind == "float":
        return None
    if s.checkpoint.kind == "public":
        return PUBLIC_QUANTIZATION.get(s.method.id)
    if s.checkpoint.tool == "NVIDIA ModelOpt":
        return {"fp8": "modelopt", "nvfp4": "modelopt_fp4"}.get(s.method.id, "modelopt")
    return VLLM_QUANTIZATION.get(s.method.id)


def vllm_args(s: Settings, program: Program) -> tuple[list[str], str]:
    g = s.group
    args = [s.checkpoint.path, "--host", "0.0.0.0", "--port", str(program.port)]
    if s.method.id in DTYPES:
        args += ["--dtype", DTYPES[s.method.id]]
    if _quantization(s):
        args += ["--quantization", _quantization(s)]
    args += ["--tensor-parallel-size", str(g.gpus_per_replica), "--max-num-seqs", str(g.batch_size),
             "--kv-cache-dtype", "fp8" if g.kv_cache_dtype == "fp8" else "auto",
             "--max-model-len", str(s.context), "--gpu-memory-utilization", f"{s.memory_share:g}",
             "--max-num-batched-tokens", str(s.budget)]
    return args, ""


def sglang_args(s: Settings, program: Program) -> tuple[list[str], str]:
    g = s.group
    args = ["--model-path", s.checkpoint.path, "--host", "0.0.0.0", "--port", str(program.port)]
    if s.method.id in DTYPES:
        args += ["--dtype", DTYPES[s.method.id]]
    if _quantization(s):
        args += ["--quantization", _quantization(s)]
    args += ["--tp-size", str(g.gpus_per_replica), "--max-running-requests", str(g.batch_size),
             "--kv-cache-dtype", "fp8_e4m3" if g.kv_cache_dtype == "fp8" else "auto",
             "--context-length", str(s.context), "--mem-fraction-static", f"{s.memory_share:g}",
             "--chunked-prefill-size", str(s.budget)]
    return args, ""


def engine_build(s: Settings, checkpoint: Checkpoint) -> str:
    """trtllm-build for the replica's running limit, context and token budget."""
    args = ["--checkpoint_dir", checkpoint.path.removesuffix("-engine") + "-checkpoint", "--output_dir",
            checkpoint.path, "--max_batch_size", str(s.group.batch_size), "--max_seq_len", str(s.context),
            "--max_num_tokens", str(s.budget)]
    return "trtllm-build " + " ".join(args)


def trtllm_args(s: Settings, program: Program) -> tuple[list[str], str]:
    g = s.group
    if s.checkpoint.tool == TRTLLM_QUANTIZE:  # a built TensorRT engine: 0.18.2's default (C++) path
        return [s.checkpoint.path, "--tokenizer", s.model.name, "--host", "0.0.0.0", "--port", str(program.port),
                "--max_batch_size", str(g.batch_size), "--max_num_tokens", str(s.budget),
                "--kv_cache_free_gpu_memory_fraction", f"{s.kv_free_fraction:g}"], ""
    # the PyTorch backend loads the (ModelOpt) Hugging Face checkpoint directly: no engine build step
    return [s.checkpoint.path, "--backend", "pytorch", "--host", "0.0.0.0", "--port", str(program.port),
            "--tp_size", str(g.gpus_per_replica), "--max_batch_size", str(g.batch_size),
            "--max_num_tokens", str(s.budget), "--max_seq_len", str(s.context),
            "--kv_cache_free_gpu_memory_fraction", f"{s.kv_free_fraction:g}"], ""


LLAMA_CACHE_TYPES = {"fp16": "f16", "bf16": "bf16", "q8_0": "q8_0", "q4_0": "q4_0"}


def llama_cpp_args(s: Settings, program: Program) -> tuple[list[str], str]:
    g = s.group
    cache = LLAMA_CACHE_TYPES.get(g.kv_cache_dtype, "f16")
    layers = str(g.gpu_layers) if g.gpu_layers is not None else "all"
    args = ["-m", s.checkpoint.path, "--host", "0.0.0.0", "--port", str(program.port), "-ngl", layers,
            "-c", str(g.batch_size * s.context), "-np", str(g.batch_size),
            "--cache-type-k", cache, "--cache-type-v", cache]
    if cache not in ("f16", "bf16"):  # a quantized V cache needs flash attention
        args += ["-fa", "on"]
    return args, ""


TABBY_CACHE_MODES = {"fp16": "FP16", "q8_0": "Q8", "q4_0": "Q4"}


def tabby_config(s: Settings, program: Program) -> tuple[list[str], str]:
    g = s.group
    folder, _, name = s.checkpoint.path.rstrip("/").rpartition("/")
    cache_size = max(256, math.ceil(g.batch_size * s.context / 256) * 256)  # TabbyAPI: a multiple of 256
    lines = ["network:", "  host: 0.0.0.0", f"  port: {program.port}", "model:",
             f"  model_dir: {json.dumps(folder or '/models')}", f"  model_name: {json.dumps(name)}",
             "  backend: exllamav2", f"  max_seq_len: {s.context}", f"  cache_size: {cache_size}",
             f"  cache_mode: {TABBY_CACHE_MODES.get(g.kv_cache_dtype, 'FP16')}",
             f"  max_batch_size: {g.batch_size}",
             f"  tensor_parallel: {'true' if g.gpus_per_replica > 1 else 'false'}", "  gpu_split_auto: true"]
    return [], "\n".join(lines) + "\n"


ENGINES = {"vllm": vllm_args, "sglang": sglang_args, "tensorrt-llm": trtllm_args, "llama.cpp": llama_cpp_args,
           "exllamav2": tabby_config}

MIN_PROMPTS = 100
BENCHMARK_SECONDS = 300  # a rate class is measured over five minutes of arrivals


def benchmark(traffic, figures, served_model: str, tokenizer: str, program: Program) -> Benchmark:
    """`vllm bench serve` (and the aiperf equivalent) at the class's lengths and at the load one replica
    carries in the plan, with the SLOs as goodput targets."""
    url = f"http://localhost:{program.port}"
    load = figures.load_per_replica
    if traffic.load_kind == "concurrency":
        clients = max(1, round(load))
        prompts = max(clients * max(1, math.ceil(traffic.requests_per_client or 10)), clients)
        pacing, aiperf_pacing = ["--max-concurrency", str(clients)], ["--concurrency", str(clients)]
    else:
        prompts = max(MIN_PROMPTS, math.ceil(load * BENCHMARK_SECONDS))
        pacing, aiperf_pacing = ["--request-rate", f"{load:.4g}"], ["--request-rate", f"{load:.4g}"]
    goodput = [f"{name}:{limit:.4g}" for name, limit in (("ttft", traffic.ttft_ms), ("tpot", traffic.tpot_limit_ms))
               if limit is not None]
    args = ["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", served_model,
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(traffic.prompt_tokens),
            "--random-output-len", str(traffic.output_tokens), "--ignore-eos", "--num-prompts", str(prompts),
            *pacing, "--percentile-metrics", "ttft,tpot", "--metric-percentiles", "50,90,99", "--seed", "0"]
    if goodput:
        args += ["--goodput", *goodput]
    args += ["--save-result", "--result-filename", f"{traffic.name}.json"]
    aiperf = ["--model", served_model, "--tokenizer", tokenizer, "--url", url, "--endpoint-type", "completions", "--streaming",
              "--synthetic-input-tokens-mean", str(traffic.prompt_tokens), "--synthetic-input-tokens-stddev", "0",
              "--output-tokens-mean", str(traffic.output_tokens), "--output-tokens-stddev", "0",
              *aiperf_pacing, "--request-count", str(prompts), "--random-seed", "0"]
    slo = dict(statistic=traffic.statistic, ttft_ms=traffic.ttft_ms, tpot_ms=traffic.tpot_limit_ms,
               predicted_ttft_ms=figures.ttft_at_statistic_ms, predicted_tpot_ms=figures.tpot_at_statistic_ms)
    quote = lambda parts: " ".join(shlex.quote(p) for p in parts)  # noqa: E731
    return Benchmark(traffic_class=traffic.name, command="vllm bench serve " + quote(args),
                     aiperf_command="aiperf profile " + quote(aiperf), slo=slo)
