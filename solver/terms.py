"""Named terms that plugins contribute and the estimator combines."""

from __future__ import annotations

from typing import NamedTuple

# Memory quantities, bytes per GPU unless the name says otherwise.
WEIGHTS = "weights_bytes"
KV_CACHE = "kv_cache_bytes"
ACTIVATIONS = "activation_bytes"
RUNTIME = "runtime_bytes"
RESERVED = "reserved_bytes"
# a share of the memory left once weights, activations and runtime are placed that the engine keeps back
# (TensorRT-LLM sizes its KV cache as kv_cache_free_gpu_mem_fraction of that free memory)
RESERVED_FREE_SHARE = "reserved_free_share"
CAPACITY = "capacity_bytes"
HOST_WEIGHTS = "host_weights_bytes"
HOST_CAPACITY = "host_capacity_bytes"

# Step quantities: one decode step or one prefill pass, per GPU.
DEVICE_BYTES = "device_bytes"
HOST_BYTES = "host_bytes"
FLOPS = "flops"
BANDWIDTH = "bandwidth_bytes_per_s"
HOST_BANDWIDTH = "host_bandwidth_bytes_per_s"
BANDWIDTH_EFFICIENCY = "bandwidth_efficiency"
HOST_BANDWIDTH_EFFICIENCY = "host_bandwidth_efficiency"
PEAK_FLOPS = "peak_flops_per_s"
COMPUTE_EFFICIENCY = "compute_efficiency"
OVERHEAD = "overhead_s"
# once per step that carries prompt tokens (whatever their number): e.g. a step run without CUDA graphs
PROMPT_STEP_OVERHEAD = "prompt_step_overhead_s"

# Quality and cost.
PPL_RELATIVE = "ppl_relative_increase"
PPL_BASELINE = "ppl_baseline"
COST = "usd_per_hour"

ADDITIVE = {WEIGHTS, KV_CACHE, ACTIVATIONS, RUNTIME, RESERVED, HOST_WEIGHTS, DEVICE_BYTES, HOST_BYTES,
            FLOPS, OVERHEAD, PROMPT_STEP_OVERHEAD, PPL_RELATIVE, COST}
MULTIPLICATIVE = {BANDWIDTH_EFFICIENCY, HOST_BANDWIDTH_EFFICIENCY, COMPUTE_EFFICIENCY}
SINGLE = {CAPACITY, HOST_CAPACITY, BANDWIDTH, HOST_BANDWIDTH, PEAK_FLOPS, PPL_BASELINE, RESERVED_FREE_SHARE}


def show(value, digits: str = "g") -> str:
    """A number for a term's detail; an array (several batch sizes or traffic classes at once) reads as 'per batch'."""
    if hasattr(value, "ndim") and value.ndim:
        return "per-batch"
    return format(float(value), digits)


class Term(NamedTuple):
    """One contribution: `value` of `quantity`, from `plugin`, explained by `detail`. Immutable; a named tuple
    because plugins make hundreds of thousands of them in one solve (a quarter of a frozen dataclass's cost)."""

    quantity: str
    value: float
    plugin: str
    detail: str
    phase: str = ""
    correction: bool = False  # an additive correction of another plugin's term: may be negative

    def as_dict(self) -> dict:
        return {"quantity": self.quantity, "phase": self.phase, "value": self.value,
                "plugin": self.plugin, "detail": self.detail}


def combine(terms: list[Term], quantity: str, phase: str = "") -> float:
    """Sum, multiply or take the single value of `quantity`, as its kind says."""
    values = [t.value for t in terms if t.quantity == quantity and t.phase == phase]
    if quantity in ADDITIVE:
        return float(sum(values))
    if quantity in MULTIPLICATIVE:
        product = 1.0
        for value in values:
            product *= value
        return product
    if not values:
        return 0.0
    if len(values) > 1:
        sources = sorted({t.plugin for t in terms if t.quantity == quantity and t.phase == phase})
        raise ValueError(f"{quantity} given by more than one plugin: {', '.join(sources)}")
    return values[0]


def totals(terms: list[Term], phase: str = "") -> dict[str, float]:
    """Every quantity of one phase combined in a single pass (sums, products, single values)."""
    result: dict[str, float] = {name: 0.0 for name in ADDITIVE | SINGLE}
    result.update({name: 1.0 for name in MULTIPLICATIVE})
    seen: dict[str, str] = {}
    for term in terms:
        if term.phase != phase:
            continue
        quantity = term.quantity
        if quantity in ADDITIVE:
            result[quantity] = result[quantity] + term.value
        elif quantity in MULTIPLICATIVE:
            result[quantity] = result[quantity] * term.value
        else:
            if quantity in seen:
                raise ValueError(f"{quantity} given by more than one plugin: {seen[quantity]}, {term.plugin}")
            seen[quantity] = term.plugin
            result[quantity] = term.value
    return result
