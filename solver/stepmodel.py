"""The time of one engine step holding d decoding sequences and p prompt tokens, from the plugins' terms.

A step reads the weights once, the KV cache of its d decoding sequences and writes the K/V of its p
prompt tokens; it computes d + p tokens' worth of FLOPs (decode tokens at the decode share of the
tensor peak, prompt tokens at the prefill share), pays the all-reduces of d + p tokens and a fixed
per-step overhead, and, when p > 0, the time an engine loses on a step it cannot replay as a CUDA graph:

    t(d, p) = max(bytes(d, p) / bandwidth, flops_d / peak_decode + flops_p / peak_prefill)
              + host reads + overhead(d, p) + [p > 0] prompt-step overhead

The plugins describe pure decode and pure prefill steps (the `quantplan_step_terms` hook). Every
quantity they give is linear in the sequences and tokens of a step, except the routed experts a MoE
step reads, which grow as the expected number of distinct experts its tokens touch, on the busiest
device when the experts are split expert-parallel (shapes.experts_touched_fraction, routed_share).
So three decode probes (d = 1, 2, 3) and one prefill probe of a whole prompt fix every coefficient,
and t(d, p) is then evaluated for any d, p (numpy arrays) with no further plugin calls: the load
models and the scheduler simulation call it thousands of times.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from . import terms as q
from .candidates import Config, Step
from .estimator import block_row, step_terms
from .registry import World
from .shapes import experts_touched_fraction, rank_imbalance, routed_share, routed_share_scalar

PROBE_SEQUENCES = np.array([1.0, 2.0, 3.0])
_SCALARS = (float, int, np.float64, np.int64)


@dataclass(frozen=True)
class StepModel:
    """Coefficients of t(d, p) for one configuration and one traffic class's lengths."""

    weight_bytes: float  # read once per step: dense layers, norms, lm_head
    expert_bytes: float  # all routed experts; a step reads the share its tokens touch
    bytes_per_sequence: float  # KV cache read per decoding sequence at the class's mean context
    bytes_per_prompt_token: float  # K/V written per prompt token
    flops_per_sequence: float  # linear layers, attention and logits of one decode token
    flops_per_prompt_token: float  # linear layers and causal attention, averaged over the prompt
    bandwidth: float  # achieved bytes/s (datasheet x framework x kernel shares)
    decode_peak: float  # achieved FLOP/s for decode tokens
    prefill_peak: float  # achieved FLOP/s for prompt tokens
    host_bytes: float  # hybrid offload: weights read from host RAM per step
    host_bytes_per_sequence: float
    host_bytes_per_prompt_token: float
    host_bandwidth: float
    overhead_s: float  # per step: launches, scheduling, all-reduce latencies
    overhead_per_sequence_s: float  # all-reduce payload of one decode token
    overhead_per_prompt_token_s: float
    expert_share: float = 0.0  # experts per token / experts per layer (0: dense)
    prompt_step_overhead_s: float = 0.0  # once per step carrying prompt tokens (no CUDA graph replay)
    routing_concentration: float = 0.0  # MoE routing skew (shapes.routed_share; 0: uniform)
    expert_imbalance: float = 0.0  # expert-parallel: busiest device above the mean (shapes.rank_imbalance)

    def seconds(self, decoding, prompt_tokens):
        """Step time with `decoding` sequences and `prompt_tokens` prompt tokens (scalars or arrays)."""
        if type(decoding) in _SCALARS and type(prompt_tokens) in _SCALARS and type(self.bandwidth) in _SCALARS:
            return self._scalar_seconds(float(decoding), float(prompt_tokens))
        d = np.asarray(decoding, dtype=float)
        p = np.asarray(prompt_tokens, dtype=float)
        device = self.weight_bytes + d * self.bytes_per_sequence + p * self.bytes_per_prompt_token
        if _nonzero(self.expert_share):  # routed experts: the share the step's tokens touch
            device = device + self.expert_bytes * touched(self.expert_share, d + p, self.routing_concentration,
                                                          self.expert_imbalance)
        memory = device / self.bandwidth
        compute = d * self.flops_per_sequence / self.decode_peak + p * self.flops_per_prompt_token / self.prefill_peak
        time = np.maximum(memory, compute) + self.overhead_s + d * self.overhead_per_sequence_s \
            + p * self.overhead_per_prompt_token_s + np.where(p > 0, self.prompt_step_overhead_s, 0.0)
        if _nonzero(self.host_bandwidth):  # hybrid offload: layers read from host RAM
            host_bytes = self.host_bytes + d * self.host_bytes_per_sequence + p * self.host_bytes_per_prompt_token
            positive = np.asarray(self.host_bandwidth) > 0
            time = time + np.where(positive, host_bytes / np.where(positive, self.host_bandwidth, 1.0), 0.0)
        return float(time) if time.ndim == 0 else time

    def _scalar_seconds(self, d: float, p: float) -> float:
        """The same formula in plain floats: the load models call it hundreds of thousands of times."""
        device = self.weight_bytes + d * self.bytes_per_sequence + p * self.bytes_per_prompt_token
        if self.expert_share > 0:
            device += self.expert_bytes * routed_share_scalar(self.expert_share, d + p, self.routing_concentration,
                                                              self.expert_imbalance)
        compute = d * self.flops_per_sequence / self.decode_peak + p * self.flops_per_prompt_token / self.prefill_peak
        host = 0.0
        if self.host_bandwidth > 0:
            host = (self.host_bytes + d * self.host_bytes_per_sequence
                    + p * self.host_bytes_per_prompt_token) / self.host_bandwidth
        overhead = self.overhead_s + d * self.overhead_per_sequence_s + p * self.overhead_per_prompt_token_s
        if p > 0:
            overhead += self.prompt_step_overhead_s
        return max(device / self.bandwidth, compute) + host + overhead

    def memory_bound(self, decoding) -> bool:
        """Whether a pure decode step of `decoding` sequences is limited by memory rather than compute."""
        d = float(decoding)
        device = (self.weight_bytes + d * self.bytes_per_sequence
                  + self.expert_bytes * float(touched(self.expert_share, d, self.routing_concentration,
                                                      self.expert_imbalance)))
        return device / self.bandwidth >= d * self.flops_per_sequence / self.decode_peak

    def scaled(self, decode: float, prefill: float) -> StepModel:
        """Decode work `decode` times and prompt work `prefill` times slower (planning at an error bar)."""
        return replace(self, bandwidth=self.bandwidth / decode, decode_peak=self.decode_peak / decode,
                       prefill_peak=self.prefill_peak / prefill, host_bandwidth=self.host_bandwidth / decode,
                       overhead_s=self.overhead_s * decode,
                       overhead_per_sequence_s=self.overhead_per_sequence_s * decode,
                       overhead_per_prompt_token_s=self.overhead_per_prompt_token_s * prefill,
                       prompt_step_overhead_s=self.prompt_step_overhead_s * prefill)


def _nonzero(value) -> bool:
    return bool(value.any()) if isinstance(value, np.ndarray) else value != 0


def touched(share, tokens, concentration=0.0, imbalance=0.0):
    """Expected share of a layer's routed experts that `tokens` tokens make the busiest device read
    (top-k routing, `share` = k / E); 0 for a dense model. The law of shapes.experts_touched_fraction."""
    return np.asarray(routed_share(share, tokens, concentration, imbalance), dtype=float)


def stack(models: list[StepModel]) -> StepModel:
    """One StepModel whose fields are arrays, element i from models[i]: evaluate many at once."""
    return StepModel(*(np.array([getattr(m, f.name) for m in models], dtype=float) for f in fields(StepModel)))


def _rate(total: dict, amount: str, efficiency: str) -> float:
    return float(total[amount]) * float(total[efficiency])


def step_model(world: World, config: Config, prompt_tokens: int, output_tokens: int) -> StepModel:
    """Probe the plugins' decode and prefill terms for `config` and a class's lengths."""
    context = prompt_tokens + output_tokens / 2  # mean cached tokens of a decoding sequence
    decode = q.totals(step_terms(world, config, Step("decode", PROBE_SEQUENCES, PROBE_SEQUENCES, context)),
                      "decode")
    prefill = q.totals(step_terms(world, config, Step("prefill", 1, prompt_tokens, prompt_tokens)), "prefill")
    return _from_probes(config, prompt_tokens, decode, prefill)


def step_models(world: World, config: Config, lengths: list[tuple[int, int]]) -> list[StepModel]:
    """step_model(world, config, prompt, output) for every (prompt, output) in `lengths`: one decode and one prefill
    probe for all of them where only built-in plugins answer (they take arrays of contexts and prompt lengths: a
    row per pair), one pair at a time otherwise. The coefficients are those of the separate probes, to the bit."""
    if len(lengths) < 2 or not world.plugins.built_in_only("quantplan_step_terms", config):
        return [step_model(world, config, *pair) for pair in lengths]
    prompts = np.array([prompt for prompt, _ in lengths])
    contexts = np.array([prompt + output / 2 for prompt, output in lengths]).reshape(-1, 1)
    decode = q.totals(step_terms(world, config, Step("decode", PROBE_SEQUENCES, PROBE_SEQUENCES, contexts)),
                      "decode")
    prefill = q.totals(step_terms(world, config, Step("prefill", 1, prompts, prompts)), "prefill")
    return [_from_probes(config, int(prompts[i]), {name: block_row(value, i, 2) for name, value in decode.items()},
                         {name: block_row(value, i, 1) for name, value in prefill.items()})
            for i in range(len(lengths))]


def _from_probes(config: Config, prompt_tokens: int, decode: dict, prefill: dict) -> StepModel:
    """The coefficients of t(d, p) from the totals of a decode probe (PROBE_SEQUENCES) and a prefill probe."""
    model = config.model
    ranks = config.expert_parallel
    touched = np.asarray(experts_touched_fraction(model, PROBE_SEQUENCES, ranks), dtype=float) * np.ones(3)
    device = np.asarray(decode[q.DEVICE_BYTES], dtype=float) * np.ones(3)
    if model.is_moe:
        basis = np.column_stack([np.ones(3), PROBE_SEQUENCES, touched])
        weight, per_sequence, experts = np.linalg.solve(basis, device)
    else:
        weight, per_sequence, experts = _line(device) + (0.0,)
    flops = _line(decode[q.FLOPS])
    overhead = _line(decode[q.OVERHEAD])
    host = _line(decode[q.HOST_BYTES])
    prompt_touched = float(experts_touched_fraction(model, prompt_tokens, ranks)) if model.is_moe else 0.0
    return StepModel(
        weight_bytes=float(weight), expert_bytes=float(experts), bytes_per_sequence=float(per_sequence),
        bytes_per_prompt_token=max(float(prefill[q.DEVICE_BYTES]) - weight - experts * prompt_touched, 0.0)
        / prompt_tokens,
        flops_per_sequence=flops[1], flops_per_prompt_token=float(prefill[q.FLOPS]) / prompt_tokens,
        bandwidth=_rate(decode, q.BANDWIDTH, q.BANDWIDTH_EFFICIENCY),
        decode_peak=_rate(decode, q.PEAK_FLOPS, q.COMPUTE_EFFICIENCY),
        prefill_peak=_rate(prefill, q.PEAK_FLOPS, q.COMPUTE_EFFICIENCY),
        host_bytes=host[0], host_bytes_per_sequence=host[1],
        host_bytes_per_prompt_token=max(float(prefill[q.HOST_BYTES]) - host[0], 0.0) / prompt_tokens,
        host_bandwidth=_rate(decode, q.HOST_BANDWIDTH, q.HOST_BANDWIDTH_EFFICIENCY),
        overhead_s=overhead[0], overhead_per_sequence_s=overhead[1],
        overhead_per_prompt_token_s=max(float(prefill[q.OVERHEAD]) - overhead[0], 0.0) / prompt_tokens,
        expert_share=model.experts_per_token / model.num_experts if model.is_moe else 0.0,
        prompt_step_overhead_s=float(prefill[q.PROMPT_STEP_OVERHEAD]),
        routing_concentration=model.routing_concentration if model.is_moe else 0.0,
        expert_imbalance=rank_imbalance(model.num_experts, ranks) if model.is_moe else 0.0,
    )


def _line(values) -> tuple[float, float]:
    """(intercept, slope) of a quantity probed at 1, 2 and 3 sequences (a scalar: no slope)."""
    values = np.asarray(values, dtype=float) * np.ones(3)
    slope = values[1] - values[0]
    return float(values[0] - slope), float(slope)
