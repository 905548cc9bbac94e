"""The deployments `quantplan check` reads: options, a plan's replica groups, or an engine command."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .check import Deployment
from .commands import parse_command
from .errors import QuantplanError

GGUF_NAMES = {"q8_0": "gguf-q8_0", "q6_k": "gguf-q6_k", "q5_k_m": "gguf-q5_k_m", "q4_k_m": "gguf-q4_k_m",
              "q4_0": "gguf-q4_0", "q3_k_m": "gguf-q3_k_m", "q2_k": "gguf-q2_k"}


def from_options(world, model, method, gpu, framework, gpus, batch, prompt_tokens, output_tokens, kv_cache_dtype,
                 **extra) -> Deployment:
    _positive(gpus=gpus, batch=batch, prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    return Deployment(where="deployment", model=world.models.get(model).id, method=world.methods.get(method).id,
                      gpu=world.gpus.get(gpu).id, framework=world.frameworks.get(framework).id, gpus=gpus or 1,
                      batch=batch, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                      kv_cache_dtype=world.kv_caches.get(kv_cache_dtype).id if kv_cache_dtype else None, **extra)


def from_plan(world, plan: dict) -> list[Deployment]:
    """One deployment per replica group, at its batch and the longest request of the classes it serves."""
    from .plan import ReplicaGroup
    from .scenario import TrafficClass
    from pydantic import ValidationError

    try:
        groups = [ReplicaGroup(**g) for g in plan["replicas"]]
        workload = {k.name: k for k in (TrafficClass(**c) for c in plan["traffic"])}
    except (ValidationError, TypeError) as error:
        raise QuantplanError(f"--plan: malformed replica group or workload: {str(error).splitlines()[0]}") from None
    found = []
    for index, g in enumerate(groups):
        served = [workload[c.name] for c in g.classes if c.name in workload] or list(workload.values())
        longest = max(served, key=lambda k: k.context_tokens)
        found.append(Deployment(
            where=f"group {index + 1} ({g.count} x {g.gpus_per_replica}x {g.gpu}, {g.method}, {g.framework})",
            model=world.models.get(plan["model"]).id, method=g.method, gpu=g.gpu, framework=g.framework,
            gpus=g.gpus_per_replica, batch=g.batch_size, prompt_tokens=longest.prompt_tokens,
            output_tokens=longest.output_tokens, kv_cache_dtype=g.kv_cache_dtype))
    return found


def from_command(world, text: str, model=None, gpu=None, batch=None, prompt_tokens=None, output_tokens=None,
                 checkpoint_config: dict | None = None, **extra) -> Deployment:
    """An engine command; --model, --gpu and the lengths fill in what a command does not say. Without
    lengths, the peak context is the command's context limit (memory at full context)."""
    _positive(batch=batch, prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    command = parse_command(text)
    config = checkpoint_config or {}
    catalog_model = world.models.get(model).id if model else _known_model(world, command.model)
    method = _method(world, command, config)
    context = command.context
    if (prompt_tokens is None or output_tokens is None) and context is None and catalog_model:
        context = world.models.get(catalog_model).max_position_embeddings  # the engines' default limit
    if prompt_tokens is None or output_tokens is None:
        prompt_tokens, output_tokens = (context - 1, 1) if context and context > 1 else (None, None)
    return Deployment(where="command", model=catalog_model, method=method, gpu=world.gpus.get(gpu).id if gpu else None,
                      framework=command.framework, gpus=command.gpus or 1, batch=batch or command.batch,
                      prompt_tokens=prompt_tokens, output_tokens=output_tokens, kv_cache_dtype=command.kv_cache_dtype,
                      quantization_flag=command.quantization, checkpoint=command.model,
                      desc_act=config.get("desc_act"), quant_method=config.get("quant_method"), **extra)


def read_checkpoint_config(path: str) -> dict:
    """quant_method and desc_act from a checkpoint's config.json (quantization_config) or quantize_config.json."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise QuantplanError(f"--checkpoint-config {path}: cannot read: {error.__class__.__name__}") from None
    except json.JSONDecodeError as error:
        raise QuantplanError(f"--checkpoint-config {path}: not JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(data, dict):
        raise QuantplanError(f"--checkpoint-config {path}: not a JSON object")
    section = data.get("quantization_config", data)
    if not isinstance(section, dict) or not ({"quant_method", "desc_act", "bits", "w_bit"} & set(section)):
        raise QuantplanError(f"--checkpoint-config {path}: no quantization_config (quant_method, desc_act)")
    return {"quant_method": section.get("quant_method"), "desc_act": section.get("desc_act")}


def read_text(path: str, option: str) -> str:
    try:
        return Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise QuantplanError(f"{option} {path}: cannot read: {error.__class__.__name__}") from None


def _positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise QuantplanError(f"--{name.replace('_', '-')} must be positive (got {value})")


def _known_model(world, checkpoint: str | None) -> str | None:
    if not checkpoint:
        return None
    try:
        return world.models.get(checkpoint).id
    except QuantplanError:  # a Hugging Face repo id: the catalog rows' `name`
        return next((m.id for m in world.models if m.name.lower() == checkpoint.lower()), None)


def _method(world, command, config: dict) -> str | None:
    """The catalog method a command serves, from its --quantization, the checkpoint config and name."""
    name = (command.model or "").lower()
    flag, quant = command.quantization or "", (config.get("quant_method") or "").lower()
    if command.framework == "llama.cpp":
        found = re.search(r"(q8_0|q6_k|q5_k_m|q4_k_m|q4_0|q3_k_m|q2_k)", name)
        return GGUF_NAMES[found.group(1)] if found else ("bf16" if "bf16" in name else "fp16" if "f16" in name
                                                         else None)
    if flag.startswith("awq") or quant == "awq" or (not flag and "awq" in name):
        return "awq-int4"
    if flag.startswith("gptq") or flag == "marlin" or quant == "gptq" or (not flag and "gptq" in name):
        return "gptq-int4-actorder" if config.get("desc_act") else "gptq-int4"
    if "fp4" in flag or "fp4" in name:
        return "nvfp4"
    if flag == "fp8" or quant == "fp8" or "fp8" in name:
        return "fp8"
    if "w8a8" in name or "int8" in name or "smoothquant" in name:
        return "int8-w8a8"
    if flag or quant or command.framework == "tensorrt-llm":  # a format this reading does not name, or a
        return None  # TensorRT-LLM checkpoint, whose precision only its own config says
    return "bf16" if command.dtype == "bfloat16" else "fp16"
