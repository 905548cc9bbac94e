"""Read an engine command line (vllm serve, SGLang, trtllm-serve, llama-server) into a deployment."""

from __future__ import annotations

import shlex

from pydantic import BaseModel, ConfigDict

from .errors import QuantplanError
from .launch import programs

# (words that start the command, engine id)
STARTS = ((("vllm", "serve"), "vllm"), (("python", "-m", "vllm.entrypoints.openai.api_server"), "vllm"),
          (("python3", "-m", "vllm.entrypoints.openai.api_server"), "vllm"),
          (("python", "-m", "sglang.launch_server"), "sglang"), (("python3", "-m", "sglang.launch_server"), "sglang"),
          (("trtllm-serve",), "tensorrt-llm"), (("llama-server",), "llama.cpp"))

# Per engine: our field -> the flags that set it (the documented names, catalogs/engine_flags.toml)
FIELDS = {
    "vllm": {"model": ("--model",), "gpus": ("--tensor-parallel-size", "-tp"), "batch": ("--max-num-seqs",),
             "context": ("--max-model-len",), "quantization": ("--quantization", "-q"),
             "kv_cache_dtype": ("--kv-cache-dtype",), "dtype": ("--dtype",)},
    "sglang": {"model": ("--model-path", "--model"), "gpus": ("--tp-size", "--tensor-parallel-size", "--tp"),
               "batch": ("--max-running-requests",), "context": ("--context-length",),
               "quantization": ("--quantization",), "kv_cache_dtype": ("--kv-cache-dtype",), "dtype": ("--dtype",)},
    "tensorrt-llm": {"gpus": ("--tp_size",), "batch": ("--max_batch_size",), "context": ("--max_seq_len",)},
    "llama.cpp": {"model": ("-m", "--model"), "batch": ("-np", "--parallel"), "context": ("-c", "--ctx-size"),
                  "kv_cache_dtype": ("-ctk", "--cache-type-k"), "gpu_layers": ("-ngl", "--gpu-layers",
                                                                                "--n-gpu-layers")},
}
KV_NAMES = {"auto": None, "fp8": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "bf16": "bf16", "bfloat16": "bf16",
            "f16": "fp16", "q8_0": "q8_0", "q4_0": "q4_0"}


class EngineCommand(BaseModel):
    """What an engine command says about a deployment; None where it says nothing."""

    model_config = ConfigDict(frozen=True)

    framework: str
    text: str
    model: str | None = None
    gpus: int | None = None
    batch: int | None = None
    context: int | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    dtype: str | None = None
    gpu_layers: int | None = None
    undocumented: list[str] = []  # flags not in the engine's documented list (catalogs/engine_flags.toml)


def parse_command(text: str) -> EngineCommand:
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise QuantplanError(f"--command: cannot split {text!r}: {error}") from None
    for start, framework in STARTS:
        if tuple(words[:len(start)]) == start:
            return _read(framework, words[len(start):], text)
    raise QuantplanError(f"--command: not an engine command quantplan reads (vllm serve, python -m "
                         f"sglang.launch_server, trtllm-serve, llama-server): {text[:60]!r}")


def _read(framework: str, words: list[str], text: str) -> EngineCommand:
    flags, positional = {}, []
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("-") and len(word) > 1:
            name, equals, value = word.partition("=")
            if not equals:
                following = words[index + 1] if index + 1 < len(words) else None
                value = following if following is not None and not following.startswith("-") else ""
                index += 1 if value else 0
            flags[name] = value
        else:
            positional.append(word)
        index += 1
    documented = set(programs()[framework].flags)
    fields = {"framework": framework, "text": text,
              "undocumented": sorted(f for f in flags if f not in documented and f not in ("-tp", "-q", "--tp"))}
    for field, names in FIELDS[framework].items():
        value = next((flags[n] for n in names if n in flags), None)
        if value is not None:
            fields[field] = _value(field, value, framework)
    if "model" not in fields and positional:
        fields["model"] = positional[0]
    if framework == "llama.cpp" and fields.get("context") and fields.get("batch"):
        fields["context"] = fields["context"] // fields["batch"]  # -c is shared by the -np slots
    return EngineCommand(**fields)


def _value(field: str, value: str, framework: str):
    if field in ("gpus", "batch", "context", "gpu_layers"):
        if field == "gpu_layers" and value in ("all", "auto"):
            return None
        try:
            return int(value)
        except ValueError:
            raise QuantplanError(f"--command: {field} {value!r} is not a whole number") from None
    if field == "kv_cache_dtype":
        return KV_NAMES.get(value, value)
    return value
