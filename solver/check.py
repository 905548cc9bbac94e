"""`quantplan check`: which of the seed guide's COMMON_MISTAKES and DEPLOYMENT_CHECKLIST items a
deployment runs into, each with the evidence and the fix. Memory and speed come from quantplan's
own estimator (solver/api.estimate), the device facts from the catalogs."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .errors import QuantplanError

# The seed guide's lists (/work/shared/seed/quantization-production-guide.txt), as it words them.
MISTAKES = {
    "per-tensor-activations": "Using per-tensor activation scaling for W8A8 (use per-token)",
    "act-order-marlin": "Using GPTQ with act_order and expecting Marlin compatibility",
    "int4-batch-api": "Quantizing to INT4 for a batch-API workload (no throughput benefit)",
    "no-kv-headroom": "Not leaving memory for KV cache (model fits but inference OOMs)",
    "fp8-without-tensor-cores": "Using FP8 on A100 (no FP8 tensor cores)",
    "no-domain-validation": "Not validating on domain-specific data (Wiki perplexity != your task)",
    "awq-non-awq-kernel": "Mixing AWQ quantized model with non-AWQ inference kernel",
    "generic-calibration": "5. Quantize model with calibration data from your domain",
}
CHECKLIST_ITEMS = {"no-kv-headroom": 2, "no-domain-validation": 6, "generic-calibration": 5, "int4-batch-api": 3}
INT4_METHODS = ("awq-int4", "gptq-int4", "gptq-int4-actorder")
BATCH_API_MIN = 32  # below this, weight-only INT4 wins on bandwidth and the comparison is not worth running
NO_GAIN = 1.05  # INT4 tokens/s at most 5% above the 8-bit method's: "no throughput benefit"
GENERIC_DATASETS = ("wikitext", "c4", "pile", "open_platypus", "open-platypus", "ultrachat", "pileval",
                    "neuralmagic/calibration", "redpajama")
MARLIN_FLAGS = ("gptq_marlin", "marlin")
AWQ_FLAGS = ("awq", "awq_marlin")


class Deployment(BaseModel):
    """One replica configuration to check; None where the input did not say."""

    model_config = ConfigDict(frozen=True)

    where: str
    model: str | None = None
    method: str | None = None
    gpu: str | None = None
    framework: str | None = None
    gpus: int = 1
    batch: int | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    kv_cache_dtype: str | None = None
    quantization_flag: str | None = None  # the engine's --quantization, from a command
    checkpoint: str | None = None  # the checkpoint's name or path
    desc_act: bool | None = None  # from the checkpoint's quantization config
    quant_method: str | None = None  # from the checkpoint's quantization config (awq, gptq, ...)
    recipe: str | None = None  # the quantization recipe's text


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    item: str  # the seed guide's words: a COMMON_MISTAKES entry, or a DEPLOYMENT_CHECKLIST step
    checklist_item: int | None
    where: str
    evidence: str
    fix: str


def run(world, deployments: list[Deployment], quality_record: str | None) -> tuple[list[Finding], list[str]]:
    """Findings for every deployment, and the checks that could not run for lack of input."""
    findings, skipped = [], []
    for d in deployments:
        for check in CHECKS:
            result = check(world, d)
            if isinstance(result, str):
                skipped.append(f"{d.where}: {result}")
            elif result is not None:
                findings.append(result)
    quantized = [d for d in deployments if d.method and world.methods.get(d.method).kind != "float"]
    if quantized and quality_record is None:
        d = quantized[0]
        findings.append(_finding("no-domain-validation", d, f"{d.method} with no quality record (--quality-record)",
                                 "measure perplexity (and your task's accuracy) of the quantized model on a holdout "
                                 "of your own traffic against the 16-bit model, and pass that record"))
    return findings, skipped


def read_quality_record(path: str) -> dict:
    """A quality record (JSON or TOML): any non-empty table of measurements on the user's own data."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise QuantplanError(f"--quality-record {path}: cannot read: {error.__class__.__name__}") from None
    for parse in (json.loads, tomllib.loads):
        try:
            record = parse(text)
        except (ValueError, tomllib.TOMLDecodeError):
            continue
        if isinstance(record, dict) and record:
            return record
    raise QuantplanError(f"--quality-record {path}: not a JSON or TOML table of measurements")


def _finding(key: str, d: Deployment, evidence: str, fix: str) -> Finding:
    return Finding(id=key, item=MISTAKES[key], checklist_item=CHECKLIST_ITEMS.get(key), where=d.where,
                   evidence=evidence, fix=fix)


def per_tensor_activations(world, d: Deployment):
    """W8A8 with activations scaled per tensor: from the recipe, or vLLM's online FP8 (per-tensor scales)."""
    evidence = _per_tensor_line(d.recipe) if d.recipe else None
    if evidence:
        return _finding("per-tensor-activations", d, f"recipe line {evidence!r}",
                        "scale activations per token: llm-compressor scheme FP8_DYNAMIC (or W8A8 for INT8), "
                        "or input_activations strategy: token, dynamic: true")
    if d.quantization_flag == "fp8" and d.checkpoint and "fp8" not in d.checkpoint.lower():
        return _finding("per-tensor-activations", d,
                        f"--quantization fp8 on {d.checkpoint}, which is not an FP8 checkpoint: vLLM quantizes it at "
                        f"load time, weights and activations each with one per-tensor scale (vLLM docs, FP8 W8A8, "
                        f"online dynamic quantization)",
                        "serve an FP8_DYNAMIC checkpoint (per-channel weights, per-token activations): "
                        "quantplan launch writes its llm-compressor recipe")
    return None


def _per_tensor_line(recipe: str) -> str | None:
    """The recipe line that scales activations per tensor: the static FP8 preset, or a tensor strategy in
    an input_activations block."""
    lines = recipe.splitlines()
    for index, line in enumerate(lines):
        if re.search(r"scheme\W+[\"']?FP8[\"']?(?![_A-Za-z0-9])", line):
            return line.strip()
        if "input_activations" in line:
            block = lines[index:index + 6]
            found = next((b for b in block if re.search(r"strategy\W+[\"']?tensor\b", b)), None)
            if found:
                return found.strip()
    return None


def act_order_on_marlin(world, d: Deployment):
    act_order = d.desc_act is True or d.method == "gptq-int4-actorder"
    if act_order and d.quantization_flag in MARLIN_FLAGS:
        source = "desc_act: true in the checkpoint's quantization config" if d.desc_act else f"method {d.method}"
        return _finding("act-order-marlin", d, f"{source}, served with --quantization {d.quantization_flag}",
                        "re-quantize with act-order off (GPTQModel desc_act=False) to run on Marlin, or keep "
                        "act-order on the ExLlama kernel (--quantization gptq) and plan for its lower speed")
    return None


def awq_with_other_kernel(world, d: Deployment):
    awq = d.quant_method == "awq" or d.method == "awq-int4" or (d.checkpoint and "awq" in d.checkpoint.lower())
    if not awq:
        return None
    if d.quantization_flag and d.quantization_flag not in AWQ_FLAGS:
        return _finding("awq-non-awq-kernel", d, f"AWQ checkpoint {d.checkpoint or ''} served with "
                        f"--quantization {d.quantization_flag}".replace("  ", " "),
                        "serve AWQ with --quantization awq_marlin (vLLM, SGLang), or drop the flag and let the "
                        "engine read the checkpoint's quantization config")
    if d.framework and d.method == "awq-int4" and "awq-int4" not in world.frameworks.get(d.framework).methods:
        return _finding("awq-non-awq-kernel", d, f"{d.framework} has no AWQ kernel",
                        "serve AWQ on vLLM, SGLang or TensorRT-LLM, or quantize for this engine's own format")
    return None


def fp8_without_tensor_cores(world, d: Deployment):
    if not d.method or world.methods.get(d.method).compute_dtype != "fp8":
        return None
    if not d.gpu:
        return "FP8 tensor cores not checked: no --gpu"
    method, gpu = world.methods.get(d.method), world.gpus.get(d.gpu)
    if method.compute_dtype == "fp8" and gpu.tflops_fp8 <= 0:
        return _finding("fp8-without-tensor-cores", d,
                        f"{gpu.id} ({gpu.architecture}, compute capability {gpu.compute_capability}) has no FP8 "
                        f"tensor cores (tflops_fp8 = 0 in the catalog): FP8 runs as weight-only, no compute gain",
                        "use INT8 W8A8 (SmoothQuant) for large batches or AWQ INT4 for small ones on this device, "
                        "or an FP8 device (Ada, Hopper, Blackwell)")
    return None


def _estimate(world, d: Deployment, method: str | None = None, batch: int | None = None):
    from .estimate import estimate

    return estimate(world.models.get(d.model).id, method or d.method, d.gpu, d.framework, d.gpus,
                    batch or d.batch, d.prompt_tokens, d.output_tokens,
                    d.kv_cache_dtype if method is None else None, world=world)


def _ready(d: Deployment) -> str | None:
    missing = [name for name in ("model", "method", "gpu", "framework", "batch", "prompt_tokens", "output_tokens")
               if getattr(d, name) is None]
    return ", ".join(missing) if missing else None


def kv_headroom(world, d: Deployment):
    """Weights + KV cache for the peak batch x context (checklist 2) against the device's memory."""
    missing = _ready(d)
    if missing:
        return f"KV headroom not checked: no {missing}"
    result = _estimate(world, d)
    if not result.compatible or result.fits:
        return None
    kv_per_gpu = result.kv_cache_gb / d.gpus
    fixed = result.memory_gb_per_gpu - kv_per_gpu
    per_sequence = kv_per_gpu / d.batch
    room = result.memory_capacity_gb_per_gpu - fixed
    most = max(0, math.floor(room / per_sequence)) if per_sequence > 0 else 0
    context = d.prompt_tokens + d.output_tokens
    return _finding("no-kv-headroom", d,
                    f"at {d.batch} sequences x {context} tokens: {result.memory_gb_per_gpu:.1f} GB per GPU "
                    f"(weights and runtime {fixed:.1f} GB + KV cache {kv_per_gpu:.1f} GB) of "
                    f"{result.memory_capacity_gb_per_gpu:.1f} GB usable",
                    f"at most {most} sequences of {context} tokens fit: cap the engine's running sequences there, "
                    f"shorten the context, use an 8-bit KV cache, or add GPUs")


def int4_for_batch_api(world, d: Deployment):
    if d.method not in INT4_METHODS or (d.batch or 0) < BATCH_API_MIN:
        return None
    missing = _ready(d)
    if missing:
        return f"INT4 at batch {d.batch} not compared: no {missing}"
    gpu, framework = world.gpus.get(d.gpu), world.frameworks.get(d.framework)
    other = "fp8" if gpu.tflops_fp8 > 0 and "fp8" in framework.methods else "int8-w8a8"
    if other not in framework.methods:
        return None
    int4, eight = _estimate(world, d), _estimate(world, d, method=other)
    if not (int4.compatible and eight.compatible and eight.fits and int4.tokens_per_s and eight.tokens_per_s):
        return None
    if int4.tokens_per_s <= NO_GAIN * eight.tokens_per_s:
        return _finding("int4-batch-api", d,
                        f"at batch {d.batch} on {d.gpus}x {gpu.id} ({framework.id}): {d.method} "
                        f"{int4.tokens_per_s:,.0f} output tokens/s vs {other} {eight.tokens_per_s:,.0f} "
                        f"(at this batch the step is bound by compute, which 4-bit weights do not reduce: the weight-only kernel runs on 16-bit tensor cores)",
                        f"use {other} (W8A8 tensor cores) for this batch, with its better quality")
    return None


def generic_calibration(world, d: Deployment):
    if not d.recipe:
        return None
    for name in GENERIC_DATASETS:
        match = re.search(rf"^.*\b{re.escape(name)}\b.*$", d.recipe, re.IGNORECASE | re.MULTILINE)
        if match:
            return _finding("generic-calibration", d, f"recipe calibrates on generic text: {match.group(0).strip()!r}",
                            "calibrate on a few hundred samples of your own traffic (prompts and answers)")
    return None


CHECKS = (per_tensor_activations, act_order_on_marlin, awq_with_other_kernel, fp8_without_tensor_cores,
          kv_headroom, int4_for_batch_api, generic_calibration)
