"""Parameter counts, bytes and FLOPs that follow from a model's shapes; Hugging Face config.json reading."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from .errors import QuantplanError
from .specs import ModelSpec


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts by role. `linear_*` are the matrices a quantization method compresses."""

    embedding: int
    lm_head: int  # 0 when tied to the embedding
    norms: int
    dense_linear: int  # attention + dense MLPs + shared experts + routers, all layers
    expert_linear: int  # routed experts, all layers
    expert_size: int  # one routed expert's matrices
    moe_layers: int

    @property
    def linear_total(self) -> int:
        return self.dense_linear + self.expert_linear

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.norms + self.linear_total


@lru_cache(maxsize=512)
def parameter_counts(model: ModelSpec) -> ParameterCounts:
    """Count parameters from shapes (Llama/Mistral/Qwen layout; MoE with optional shared expert)."""
    h, d = model.hidden_size, model.head_dim
    q_width, kv_width = model.attention_heads * d, model.kv_heads * d
    attention = h * q_width + 2 * h * kv_width + q_width * h
    if model.qkv_bias:
        attention += q_width + 2 * kv_width
    norms_per_layer = 2 * h + (2 * d if model.qk_norm else 0)
    moe_layers = model.layers - model.dense_layers if model.is_moe else 0
    dense_layers = model.layers - moe_layers
    expert_size = 3 * h * model.moe_intermediate_size
    per_moe_layer_dense = h * model.num_experts + 3 * h * model.shared_expert_intermediate_size
    dense_linear = (model.layers * attention + dense_layers * 3 * h * model.intermediate_size
                    + moe_layers * per_moe_layer_dense)
    embedding = model.vocab_size * h
    return ParameterCounts(
        embedding=embedding,
        lm_head=0 if model.tie_word_embeddings else embedding,
        norms=model.layers * norms_per_layer + h,
        dense_linear=dense_linear,
        expert_linear=moe_layers * model.num_experts * expert_size,
        expert_size=expert_size,
        moe_layers=moe_layers,
    )


def active_linear_params(model: ModelSpec) -> int:
    """Linear parameters one token passes through (routed experts: top-k of them)."""
    counts = parameter_counts(model)
    return counts.dense_linear + counts.moe_layers * model.experts_per_token * counts.expert_size


def experts_touched_fraction(model: ModelSpec, tokens):
    """Expected share of a layer's routed experts that `tokens` tokens activate (uniform routing).

    `tokens` may be a numpy array (several batch sizes at once)."""
    if not model.is_moe:
        return 1.0
    import numpy as np

    miss = (1.0 - model.experts_per_token / model.num_experts) ** np.maximum(tokens, 1)
    return 1.0 - miss


def kv_elements_per_token(model: ModelSpec) -> int:
    """K and V elements cached per token: 2 * layers * kv_heads * head_dim."""
    return 2 * model.layers * model.kv_heads * model.head_dim


def kv_heads_per_gpu(model: ModelSpec, tensor_parallel: int) -> float:
    """KV heads each GPU stores: split when kv_heads >= t, else each GPU keeps one (replicated)."""
    return max(model.kv_heads / tensor_parallel, 1.0)


def attention_flops_per_token(model: ModelSpec, context: float) -> float:
    """QK^T and AV for one new token attending to `context` tokens: 4 * layers * heads * head_dim * context."""
    return 4.0 * model.layers * model.attention_heads * model.head_dim * context


def prefill_attention_flops(model: ModelSpec, prompt_tokens: int) -> float:
    """Causal attention over a whole prompt: half of the P x P score matrix, two matmuls."""
    return 2.0 * model.layers * model.attention_heads * model.head_dim * float(prompt_tokens) ** 2


_CONFIG_FIELDS = {
    "num_hidden_layers": "layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "attention_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
}


def model_from_config(path: str | Path, model_id: str | None = None) -> ModelSpec:
    """Read a Hugging Face config.json (dense or MoE, GQA, tied embeddings) into a ModelSpec."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise QuantplanError(f"--model-config: no such file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise QuantplanError(f"--model-config {path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise QuantplanError(f"--model-config {path}: expected a JSON object")
    config = config.get("text_config", config) if "num_hidden_layers" not in config else config
    missing = [key for key in _CONFIG_FIELDS if key not in config]
    if missing:
        raise QuantplanError(f"--model-config {path}: missing field {missing[0]!r}")
    fields = {ours: config[theirs] for theirs, ours in _CONFIG_FIELDS.items()}
    heads = config["num_attention_heads"]
    fields["kv_heads"] = config.get("num_key_value_heads") or heads
    fields["head_dim"] = config.get("head_dim") or config["hidden_size"] // heads
    fields["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", False))
    model_type = str(config.get("model_type", "custom"))
    fields["qkv_bias"] = bool(config.get("attention_bias", model_type.startswith("qwen2")))
    fields["qk_norm"] = model_type.startswith("qwen3")
    experts = config.get("num_local_experts") or config.get("num_experts") or config.get("n_routed_experts") or 0
    if experts:
        fields["num_experts"] = experts
        fields["experts_per_token"] = config.get("num_experts_per_tok") or config.get("num_experts_per_token") or 2
        fields["moe_intermediate_size"] = config.get("moe_intermediate_size") or config["intermediate_size"]
        fields["shared_expert_intermediate_size"] = config.get("shared_expert_intermediate_size") or 0
        fields["dense_layers"] = config.get("first_k_dense_replace") or 0
    fields["max_position_embeddings"] = config.get("max_position_embeddings") or 4096
    name = model_id or config.get("_name_or_path") or path.parent.name or "custom"
    slug = "".join(c if c.isalnum() or c in ".-" else "-" for c in str(name).lower()).strip("-") or "custom"
    family = _family_of(model_type)
    try:
        return ModelSpec(
            id=slug, name=str(name), family=family, wikitext2_ppl=6.0,
            ppl_source=("estimate: no baseline for a config.json model; 6.0 is a typical 7-8B WikiText-2 "
                        "ppl at ctx 512, so ppl_delta is indicative only (ppl_delta_pct is not affected)"),
            source=f"config.json at {path}", **fields,
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise QuantplanError(f"--model-config {path}: {where}: {first['msg']}") from None
    except TypeError as error:
        raise QuantplanError(f"--model-config {path}: {error}") from None


def _family_of(model_type: str) -> str:
    if model_type.startswith("qwen3"):
        return "qwen3"
    if model_type.startswith("qwen2"):
        return "qwen2"
    if model_type.startswith(("mistral", "mixtral")):
        return "mistral"
    return "llama-3"
