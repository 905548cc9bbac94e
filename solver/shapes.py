"""Parameter counts, bytes and FLOPs that follow from a model's shapes; Hugging Face config.json reading."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from .errors import QuantplanError, validation_problem
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


def experts_touched_fraction(model: ModelSpec, tokens, expert_parallel: int = 1):
    """Expected share of a layer's routed experts that `tokens` tokens make one device read.

    With the experts split tensor-parallel (`expert_parallel` 1) every device reads its slice of every
    touched expert: the mean share. Split expert-parallel over `expert_parallel` devices, each holds
    whole experts and the step waits for the device whose experts the tokens touched most
    (`routed_share`). `tokens` may be a numpy array (several batch sizes at once)."""
    if not model.is_moe:
        return 1.0
    return routed_share(model.experts_per_token / model.num_experts, tokens, model.routing_concentration,
                        rank_imbalance(model.num_experts, expert_parallel))


def routed_share(share, tokens, concentration=0.0, imbalance=0.0):
    """Share of a layer's routed experts the busiest device reads for a step of `tokens` tokens.

    `share` = k / E: a token picks k of E experts. Under uniform routing (`concentration` 0) an expert
    is missed by all n tokens with probability (1 - k/E)^n. Real routers favour some experts more than
    others from step to step: with each expert's pick probability drawn as Beta(c k/E, c (1 - k/E))
    (mean k/E, concentration c; c -> infinity is uniform) the miss probability is the Beta moment
    E[(1 - q)^n] = G(b + n) G(a + b) / (G(b) G(a + b + n)), a = c k/E, b = c (1 - k/E) (G: gamma).
    A device holding m of the experts then touches a Binomial(m, f) count of them; the step waits
    for the largest of the D devices' counts, f + z_D sqrt(f (1 - f) / m) as a share (normal
    approximation, capped at 1); `imbalance` = z_D / sqrt(m) (`rank_imbalance`). Scalars or arrays."""
    import numpy as np

    n = np.maximum(np.asarray(tokens, dtype=float), 1.0)
    share = np.asarray(share, dtype=float)
    concentration = np.asarray(concentration, dtype=float)
    imbalance = np.asarray(imbalance, dtype=float)
    shape = np.broadcast_shapes(n.shape, share.shape, concentration.shape, imbalance.shape)
    found = np.zeros(shape)
    routed = np.broadcast_to(share > 0, shape)  # dense elements (share 0) read no routed expert
    if routed.any():  # the law on the routed elements alone (a fit's probes are mostly dense: gammaln is costly)
        pick = lambda value: np.broadcast_to(value, shape)[routed]  # noqa: E731
        found[routed] = _busiest(pick(share), pick(n), pick(concentration), pick(imbalance))
    return float(found) if found.ndim == 0 else found


def _busiest(share, n, concentration, imbalance):
    """routed_share's law on 1-d arrays of routed elements (share > 0, n >= 1)."""
    import numpy as np

    uniform = (1.0 - share) ** n
    if np.any(concentration > 0):
        from scipy.special import gammaln

        c = np.where(concentration > 0, concentration, 1.0)
        a, b = c * share, c * (1.0 - share)
        skewed = np.exp(gammaln(b + n) + gammaln(a + b) - gammaln(b) - gammaln(a + b + n))
        miss = np.where(concentration > 0, skewed, uniform)
    else:
        miss = uniform
    mean = 1.0 - miss
    return np.minimum(mean + imbalance * np.sqrt(mean * miss), 1.0)


def routed_share_scalar(share: float, tokens: float, concentration: float, imbalance: float) -> float:
    """routed_share in plain floats (the load models call it hundreds of thousands of times)."""
    n = max(tokens, 1.0)
    if concentration > 0:
        a, b = concentration * share, concentration * (1.0 - share)
        miss = math.exp(math.lgamma(b + n) + math.lgamma(a + b) - math.lgamma(b) - math.lgamma(a + b + n))
    else:
        miss = (1.0 - share) ** n
    mean = 1.0 - miss
    return min(mean + imbalance * math.sqrt(mean * miss), 1.0)


def rank_imbalance(experts: int, expert_parallel: int) -> float:
    """z_D / sqrt(E / D): how far the busiest of D expert-parallel devices, each holding E / D experts,
    sits above the mean share, in units of sqrt(f (1 - f)) (0 with no expert parallelism)."""
    if expert_parallel <= 1 or experts <= 0:
        return 0.0
    return expected_max_normal(expert_parallel) / math.sqrt(experts / expert_parallel)


@lru_cache(maxsize=64)
def expected_max_normal(count: int) -> float:
    """Expected largest of `count` independent standard normal draws: the integral of
    x count phi(x) Phi(x)^(count - 1) (0 for one draw; 1/sqrt(pi) for two; 1.0294 for four)."""
    if count <= 1:
        return 0.0
    from scipy.integrate import quad

    def integrand(x: float) -> float:
        density = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return x * count * density * (0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))) ** (count - 1)

    return quad(integrand, -math.inf, math.inf)[0]


def kv_elements_per_token(model: ModelSpec) -> int:
    """K and V elements cached per token: 2 * layers * kv_heads * head_dim."""
    return 2 * model.layers * model.kv_heads * model.head_dim


def kv_heads_per_gpu(model: ModelSpec, tensor_parallel: int) -> float:
    """KV heads each GPU stores: split when kv_heads >= t, else each GPU keeps one (replicated)."""
    return max(model.kv_heads / tensor_parallel, 1.0)


def attention_flops_per_token(model: ModelSpec, context: float) -> float:
    """QK^T and AV for one new token attending to `context` tokens: 4 * layers * heads * head_dim * context."""
    return 4.0 * model.layers * model.attention_heads * model.head_dim * context


def prefill_attention_flops(model: ModelSpec, prompt_tokens: int):
    """Causal attention over a whole prompt: half of the P x P score matrix, two matmuls (whole tokens; an array
    of prompt lengths gives an array)."""
    if getattr(prompt_tokens, "ndim", 0):
        import numpy as np

        tokens = np.trunc(prompt_tokens)
    else:
        tokens = float(int(prompt_tokens))
    return 2.0 * model.layers * model.attention_heads * model.head_dim * tokens ** 2


_CONFIG_FIELDS = {
    "num_hidden_layers": "layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "attention_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
}


def model_from_config(path: str | Path, model_id: str | None = None) -> ModelSpec:
    """Read a Hugging Face config.json (dense or MoE, GQA, tied embeddings) into a ModelSpec.

    Every field is checked for its type (a whole number is not `true` or `"32"`) and the result against
    the model record's bounds; a present but zero count (KV heads, head_dim, experts per token) is an
    error, not a default. The error names the file and the config.json key.
    """
    path = Path(path)
    label = f"--model-config {path}"
    config = _read_json(path, label)
    if "num_hidden_layers" not in config and "text_config" in config:
        config = config["text_config"]
        if not isinstance(config, dict):
            raise QuantplanError(f"{label}: text_config must be a JSON object")
        label += " text_config"
    missing = [key for key in _CONFIG_FIELDS if key not in config]
    if missing:
        raise QuantplanError(f"{label}: missing field {missing[0]!r}")
    read = _ConfigReader(config, label)
    fields = {ours: read.count(theirs) for theirs, ours in _CONFIG_FIELDS.items()}
    heads = fields["attention_heads"]
    fields["kv_heads"] = read.count("num_key_value_heads", default=heads)
    fields["head_dim"] = read.count("head_dim", default=fields["hidden_size"] // heads or 1)
    fields["tie_word_embeddings"] = read.flag("tie_word_embeddings", False)
    model_type = read.text("model_type", "custom")
    fields["qkv_bias"] = read.flag("attention_bias", model_type.startswith("qwen2"))
    fields["qk_norm"] = model_type.startswith("qwen3")
    experts = read.first_count(("num_local_experts", "num_experts", "n_routed_experts"), minimum=0)
    if experts:
        fields["num_experts"] = experts
        fields["experts_per_token"] = read.first_count(("num_experts_per_tok", "num_experts_per_token"), default=2)
        fields["moe_intermediate_size"] = read.count("moe_intermediate_size", default=fields["intermediate_size"])
        fields["shared_expert_intermediate_size"] = read.count("shared_expert_intermediate_size", default=0,
                                                               minimum=0)
        fields["dense_layers"] = read.count("first_k_dense_replace", default=0, minimum=0)
    fields["max_position_embeddings"] = read.count("max_position_embeddings", default=4096)
    name = model_id or read.text("_name_or_path", "") or path.parent.name or "custom"
    slug = "".join(c if c.isalnum() or c in ".-" else "-" for c in str(name).lower()).strip("-") or "custom"
    family = _family_of(model_type)
    try:
        return ModelSpec(
            id=slug[:100], name=str(name), family=family, wikitext2_ppl=6.0,
            ppl_source=("estimate: no baseline for a config.json model; 6.0 is a typical 7-8B WikiText-2 "
                        "ppl at ctx 512, so ppl_delta is indicative only (ppl_delta_pct is not affected)"),
            source=f"config.json at {path}", **fields,
        )
    except ValidationError as error:
        location, message = validation_problem(error)
        where = _CONFIG_KEYS.get(str(location[0]), str(location[0])) if location else ""
        raise QuantplanError(f"{label}: {where + ': ' if where else ''}{message}") from None


# ModelSpec fields -> the config.json keys they come from (for error messages).
_CONFIG_KEYS = {**{ours: theirs for theirs, ours in _CONFIG_FIELDS.items()}, "kv_heads": "num_key_value_heads",
                "experts_per_token": "num_experts_per_tok", "dense_layers": "first_k_dense_replace"}


def _read_json(path: Path, label: str) -> dict:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise QuantplanError(f"--model-config: no such file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise QuantplanError(f"{label}: not valid JSON ({error})") from None
    except RecursionError:
        raise QuantplanError(f"{label}: not a config.json (JSON nested too deeply)") from None
    except OSError as error:
        raise QuantplanError(f"{label}: cannot read: {error.strerror or error}") from None
    if not isinstance(config, dict):
        raise QuantplanError(f"{label}: expected a JSON object")
    return config


class _ConfigReader:
    """Typed access to config.json keys; a wrong type or a count below its minimum is an error naming the key."""

    def __init__(self, config: dict, label: str) -> None:
        self.config, self.label = config, label

    def count(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.config.get(key)
        if value is None:
            if default is None:
                raise QuantplanError(f"{self.label}: {key}: missing or null")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            shown = json.dumps(value)[:40]
            raise QuantplanError(f"{self.label}: {key}: expected a whole number, got {shown}")
        if value < minimum:
            raise QuantplanError(f"{self.label}: {key}: {value} is below {minimum}")
        return value

    def first_count(self, keys: tuple[str, ...], default: int = 0, minimum: int = 1) -> int:
        """The first of `keys` present (other names of one field across model families)."""
        for key in keys:
            if self.config.get(key) is not None:
                return self.count(key, minimum=minimum)
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise QuantplanError(f"{self.label}: {key}: expected true or false, got {json.dumps(value)[:40]}")
        return value

    def text(self, key: str, default: str) -> str:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise QuantplanError(f"{self.label}: {key}: expected a string, got {json.dumps(value)[:40]}")
        return value


def _family_of(model_type: str) -> str:
    """The quality family of a config.json's model_type: llama is taken as llama-3 (the more sensitive of
    Llama-2/3); a type without quality rows keeps its own name, so the quality model flags its fallback."""
    if model_type.startswith("qwen3"):
        return "qwen3"
    if model_type.startswith("qwen2"):
        return "qwen2"
    if model_type.startswith(("mistral", "mixtral")):
        return "mistral"
    if model_type.startswith("gemma2"):
        return "gemma-2"
    if model_type.startswith("llama") or model_type == "custom":
        return "llama-3"
    return model_type
