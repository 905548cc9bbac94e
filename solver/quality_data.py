"""The shipped quality measurements (catalogs/quality_measurements.csv) read into comparable points.

Each published row becomes one `Point`: a configuration (family, size, method key and its options) and
one figure of one kind: relative perplexity increase (`ppl`), mean KL divergence to the base model in
nats per token (`kl`), or accuracy recovery in percent of the base model's score for a task kind
(`knowledge`, `math`, `code`, `chat`). Rows that measure something else, or mix task kinds, are left
out with a reason (`skipped`).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from importlib import resources

TASK_KINDS = ("knowledge", "math", "code", "chat")
KINDS = ("ppl", "kl") + TASK_KINDS

# Weight bits of a ggml block type (ggml-common.h block structs: bits per weight including the scales);
# a k-quant mix suffix adds the measured average uplift of the mix over its base type in
# catalogs/methods.toml (Q4_K_M 4.798 vs Q4_K 4.5, Q3_K_M 3.845 vs Q3_K 3.4375): _M +0.3, _L +0.6.
GGML_BITS = {
    "q8_0": 8.5, "q6_k": 6.5625, "q5_k": 5.5, "q5_0": 5.5, "q5_1": 6.0, "q4_k": 4.5, "q4_0": 4.5, "q4_1": 5.0,
    "q3_k": 3.4375, "q2_k": 2.625, "iq6_k": 6.5, "iq5_k": 5.5, "iq4_k": 4.5, "iq4_ks": 4.25, "iq4_nl": 4.5,
    "iq4_xs": 4.25, "iq3_s": 3.4375, "iq3_xs": 3.3, "iq3_xxs": 3.0625, "iq2_s": 2.5, "iq2_xs": 2.3125,
    "iq2_xxs": 2.0625, "iq1_m": 1.75, "iq1_s": 1.5625,
}
MIX_UPLIFT = {"s": 0.0, "m": 0.3, "l": 0.6}

# Bits of the non-GGUF method keys: weight bits plus a 16-bit scale per group (g128: +0.125; NVFP4
# 8-bit scale per 16: +0.5; MXFP4 8-bit per 32: +0.25).
METHOD_BITS = {
    "fp8": 8.0, "int8-w8a8": 8.0, "w8a16": 8.0, "smoothquant-w6a6": 6.0, "smoothquant-w4a4": 4.0,
    "awq-int4": 4.125, "gptq-int4": 4.125, "rtn-int4": 4.125, "autoround-int4": 4.125, "quip-int4": 4.0,
    "awq-int3": 3.125, "gptq-int3": 3.125, "rtn-int3": 3.125, "quip-int3": 3.0, "gptq-int2": 2.125,
    "nvfp4": 4.5, "mxfp4": 4.25, "w4a8-awq": 4.125,
}


@dataclass(frozen=True)
class Point:
    """One measured figure for one configuration, comparable across sources."""

    source: str
    model: str
    family: str
    params_b: float
    method: str  # method key: a quantplan method id where one exists (awq-int4, gguf-q4_k_m, ...)
    bits: float
    kind: str  # ppl | kl | knowledge | math | code | chat
    value: float  # ppl: relative increase (0.028 = +2.8%); kl: nats/token; tasks: recovery in %
    baseline: float | None  # the base model's perplexity under the source's protocol (ppl rows)
    floor: float  # ppl: the relative precision the source prints (rounding), at least the protocol noise
    calibrated: bool = False  # GGUF with an importance matrix, or AutoRound-optimised rounding
    per_channel: bool = False  # one scale per output channel instead of per group of 128
    act_order: bool = False
    long_context: bool = False  # ppl measured at 2048+ tokens (papers) rather than llama.cpp's 512
    metric: str = ""

    @property
    def absolute(self) -> float | None:
        return None if self.baseline is None else self.value * self.baseline


def method_bits(method: str) -> float:
    """Bits per weight of a method key (GGUF: its block type and mix; others: METHOD_BITS)."""
    if method.startswith("gguf-"):
        name = method.removeprefix("gguf-")
        if name in GGML_BITS:
            return GGML_BITS[name]
        base, _, mix = name.rpartition("_")
        for block in (base, base + "_s"):  # q4_k_m on q4_k; iq3_m on iq3_s
            if block in GGML_BITS and mix in MIX_UPLIFT:
                return GGML_BITS[block] + MIX_UPLIFT[mix]
        raise ValueError(f"unknown GGUF type {name!r}")
    return METHOD_BITS[method]


PROTOCOL_NOISE = 2e-4  # llama.cpp BF16 vs FP16 of Llama-3-8B: +0.04% ppl (scoreboard row), half of it


def task_kind(metric: str) -> str | None:
    """The task kind an accuracy metric measures; None for a mix of kinds or not a task metric."""
    name = metric.lower()
    if name.startswith(("avg3", "avg4", "openllmv2")):
        return None  # averages over kinds (knowledge with instruction following or math)
    if name.startswith("gsm8k"):
        return "math"
    if name.startswith("humaneval"):
        return "code"
    if name.startswith(("arenahard", "ifeval")):
        return "chat"
    if name.startswith(("mmlu", "avg", "commonsense", "c-eval", "hellaswag", "winogrande", "arc-c",
                        "truthfulqa", "openllmv1")):
        return "knowledge"
    return None


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def _method_key(raw: str, detail: str) -> tuple[str | None, dict]:
    """Method key and options of a row; None for a row that is no quantization (a cast)."""
    raw, low = raw.strip().lower(), detail.lower()
    options = {"per_channel": "per-channel" in low, "act_order": "act-order" in low}
    if raw.startswith("gguf-"):
        name = raw.split(" ")[0]
        options["calibrated"] = (("imatrix" in low and "no imatrix" not in low and "imatrix=none" not in low
                                  and "not stated" not in low) or "alg_ext" in low)
        return name, options
    weight = re.search(r"w(\d)a(\d+)", low)
    bits = int(weight.group(1)) if weight else None
    if raw in ("rtn-int", "gptq", "awq", "quip") and bits is not None:
        if bits == 8:
            return "w8a16", options
        return f"{raw.replace('rtn-int', 'rtn')}-int{bits}", options
    if raw == "smoothquant":
        return f"smoothquant-w{bits}a{weight.group(2)}", options
    aliases = {"int8-w8a8 smoothquant": "int8-w8a8", "w4a16-gptq": "gptq-int4", "w8a16-gptq": "w8a16",
               "gptq-int8 (w8a16)": "w8a16"}
    key = aliases.get(raw, raw)
    if key == "bf16->fp16 cast":
        return None, options
    return key, options


def _relative_ppl(row: dict) -> tuple[float, float | None, float] | None:
    """(relative increase, baseline ppl, printed precision) of a perplexity row; None if not one."""
    metric, value, baseline = row["metric"], row["value"], row["baseline"]
    if metric == "wikitext2_ppl":
        base = float(baseline)
        step = 10.0 ** -min(_decimals(value), _decimals(baseline))
        return float(value) / base - 1, base, step / base
    if metric == "wikitext2_ppl_rel_increase_pct":
        return float(value) / 100, None, 10.0 ** -_decimals(value) / 100
    if metric == "ppl_ratio_vs_fp16":
        return float(value) - 1, None, 10.0 ** -_decimals(value)
    return None


def _recovery(row: dict) -> float:
    metric, value = row["metric"], float(row["value"])
    if metric.endswith("_recovery_pct"):
        return value
    if metric.startswith("MMLU_loss_pct"):
        return 100.0 - value
    return 100.0 * value / float(row["baseline"])


def point(row: dict) -> Point | str:
    """The comparable point of one CSV row, or the reason it is left out."""
    method, options = _method_key(row["method"], row["detail"])
    if method is None:
        return "not a quantization (BF16/FP16 cast: the protocol's noise floor)"
    try:
        bits = method_bits(method)
    except (KeyError, ValueError):
        return f"method {method!r} has no bits-per-weight entry"
    base = dict(source=row["source"], model=row["model"], family=row["family"], params_b=float(row["params_b"]),
                method=method, bits=bits, metric=row["metric"], **options)
    metric = row["metric"]
    relative = _relative_ppl(row)
    if relative is not None:
        value, baseline, step = relative
        long_context = "512" not in row["context"] and "llama" not in row["context"]
        return Point(**base, kind="ppl", value=value, baseline=baseline, floor=max(step, PROTOCOL_NOISE),
                     long_context=long_context)
    if metric == "mean_KLD_vs_fp16":
        return Point(**base, kind="kl", value=float(row["value"]), baseline=None, floor=0.0)
    if "ppl" in metric:
        return f"{metric}: not WikiText-2 token perplexity (word-level or another corpus)"
    kind = task_kind(metric)
    if kind is None:
        return f"{metric}: mixes task kinds or is not a task score"
    return Point(**base, kind=kind, value=_recovery(row), baseline=None, floor=0.0)


def load(path: str | None = None) -> tuple[list[Point], dict[str, int]]:
    """Points of the shipped file (or `path`) and how many rows were left out, by reason."""
    handle = open(path, newline="") if path else resources.files("quantplan.catalogs").joinpath(
        "quality_measurements.csv").open(newline="")
    points, skipped = [], {}
    with handle:
        for row in csv.DictReader(handle):
            found = point(row)
            if isinstance(found, Point):
                if math.isfinite(found.value):
                    points.append(found)
            else:
                skipped[found] = skipped.get(found, 0) + 1
    return points, skipped
