"""Quality model v2: perplexity increase, KL divergence and task recovery of a quantized model.

Three figures, all from the parameters `quantplan fit-quality` writes to catalogs/quality_model.toml.
The perplexity model works on the mean cross-entropy increase in nats per token, dce = ln(1 + rel)
(rel: relative perplexity increase), which is the quantity a weight perturbation moves (it grows with
the quantization noise power, ~4^-bits, and is what the KL divergence to the base model tracks: on the
llama.cpp Llama-3-8B scoreboard KL / dce stays within 0.98-1.22 from Q6_K to IQ1_S):

  ln dce = c0 + c1 (b - 4.5)                          global bits curve (b: bits per weight)
         + k[kind(method)] + m[method]                 method kind (gguf, weight-only, weight+activation)
         + f[family] + fs[family] (b - 4.5)            family offset and its own bits slope
         + (s + ss[family]) ln(N / 8B) + options       size slope, global and per family
  mean KL divergence  kl = exp(k0 + k1 ln dce)          (nats per token)
  task recovery (%)   100 - exp(t[task] + g ln dce + h ln(N / 8B) + a[family] + d[method])

Every family, method and kind term is a deviation shrunk toward 0 (the global curve) by a Gaussian
prior, so a family or method the fit never saw is predicted on the global curve. For planning, a
method without rows gets its kind's curve plus a conservative margin and a family without rows takes
the most sensitive fitted family; either is flagged. Each figure carries a 10th-90th percentile band
from the out-of-sample (leave-one-source-out) errors.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from .quality_data import TASK_KINDS

REFERENCE_FAMILY = "llama-2"  # family_sensitivity() is relative to it
SIZE_PIVOT_B = 8.0
BITS_PIVOT = 4.5
OPTIONS = ("calibrated", "per_channel", "act_order", "long_context")
MAX_DCE = 50.0  # nats per token: beyond any measured collapse (SmoothQuant W4A4 on Llama-3-8B: 6.6)


def method_kind(method: str) -> str:
    """The family of quantizers a method key belongs to: llama.cpp block formats (gguf), weight-only
    integer or float formats with 16-bit activations (weight), formats that also quantize activations
    (activation: W8A8, SmoothQuant, FP8, W4A8)."""
    if method.startswith("gguf-"):
        return "gguf"
    if method in ("int8-w8a8", "fp8", "w4a8-awq") or method.startswith("smoothquant-"):
        return "activation"
    return "weight"


@dataclass(frozen=True)
class Case:
    """What quality depends on: family, size, method key and the method's options."""

    family: str
    params_b: float
    method: str
    bits: float
    calibrated: bool = False
    per_channel: bool = False
    act_order: bool = False
    long_context: bool = False


def ppl_features(case: Case) -> dict[str, float]:
    """Names and values of the terms of ln dce for `case` (parameter name -> multiplier)."""
    bits, size = case.bits - BITS_PIVOT, math.log(case.params_b / SIZE_PIVOT_B)
    found = {"bits.intercept": 1.0, "bits.slope": bits, f"kind.{method_kind(case.method)}": 1.0,
             f"method.{case.method}": 1.0, f"family.{case.family}": 1.0, f"family_slope.{case.family}": bits,
             "size": size, f"size.{case.family}": size}
    for option in OPTIONS:
        if getattr(case, option):
            found[f"option.{option}"] = 1.0
    return found



def relative_of(dce: float) -> float:
    """Relative perplexity increase of a cross-entropy increase in nats per token: exp(dce) - 1."""
    return math.expm1(min(dce, MAX_DCE))


def accuracy_features(case: Case, kind: str, log_dce: float) -> dict[str, float]:
    """Terms of ln(accuracy loss in points of recovery) for `case` on a task kind."""
    return {f"task.{kind}": 1.0, "damage": log_dce, "size": math.log(case.params_b / SIZE_PIVOT_B),
            f"family.{case.family}": 1.0, f"method.{case.method}": 1.0}


@dataclass(frozen=True)
class Band:
    """A prediction and its 10th-90th percentile band."""

    value: float
    low: float
    high: float

    def as_dict(self, digits: int = 6) -> dict:
        return {"value": round(self.value, digits), "low": round(self.low, digits), "high": round(self.high, digits)}


@dataclass(frozen=True)
class Prediction:
    relative: Band  # relative perplexity increase (0.028 = +2.8%)
    kl_divergence: Band
    recovery_pct: dict[str, Band]
    notes: list[str] = field(default_factory=list)  # fallbacks used (conservative estimates)

    @property
    def fallback(self) -> bool:
        return bool(self.notes)


LOSSLESS = Prediction(Band(0.0, 0.0, 0.0), Band(0.0, 0.0, 0.0), {k: Band(100.0, 100.0, 100.0) for k in TASK_KINDS})


class QualityModel:
    """The fitted parameters and residual bands, with the prediction rules of this module's docstring."""

    def __init__(self, ppl: dict[str, float], kl: dict[str, float], accuracy: dict[str, float],
                 bands: dict[str, tuple[float, float]], rows: dict[str, int] | None = None) -> None:
        self.ppl, self.kl, self.accuracy, self.bands = ppl, kl, accuracy, bands
        self.rows = rows or {}

    # -- perplexity
    def _method_effect(self, case: Case, notes: list[str], conservative: bool) -> float:
        """The method's deviation from the global bits curve: its kind's offset plus its own."""
        kind = self.ppl.get(f"kind.{method_kind(case.method)}", 0.0)
        key = f"method.{case.method}"
        if key in self.ppl:
            return kind + self.ppl[key]
        margin = self.ppl.get("bits.margin", 0.0) if conservative else 0.0
        notes.append(f"method {case.method} has no perplexity rows: conservative estimate from its "
                     f"{case.bits:g} bits/weight (fitted {method_kind(case.method)} curve + {margin:.2f} in ln)")
        return kind + margin

    def _family_term(self, family: str, bits: float, size: float) -> float:
        return (self.ppl.get(f"family.{family}", 0.0) + self.ppl.get(f"family_slope.{family}", 0.0) * bits
                + self.ppl.get(f"size.{family}", 0.0) * size)

    def _family_effect(self, case: Case, notes: list[str], conservative: bool) -> float:
        """The family's deviation from the global curve at the case's bits and size. A family without
        rows: the most sensitive fitted family (conservative) or the global curve (central)."""
        bits, size = case.bits - BITS_PIVOT, math.log(case.params_b / SIZE_PIVOT_B)
        if f"family.{case.family}" in self.ppl:
            return self._family_term(case.family, bits, size)
        if not conservative:
            notes.append(f"family {case.family} has no quality rows: the fitted curve of all families")
            return 0.0
        known = sorted({name.split(".", 1)[1] for name in self.ppl if name.startswith("family.")})
        worst = max(known, key=lambda f: self._family_term(f, bits, size))
        notes.append(f"family {case.family} has no quality rows: conservative estimate (the most sensitive "
                     f"fitted family at {case.params_b:g}B, {worst})")
        return self._family_term(worst, bits, size)

    def log_dce(self, case: Case, notes: list[str] | None = None, conservative: bool = True) -> float:
        """ln of the cross-entropy increase (nats per token) of `case`'s weights, KV cache not included.
        `conservative`: a method without rows gets its kind's curve plus a margin and a family without
        rows the most sensitive fitted family (False: the fitted curves, for scoring predictions)."""
        notes = [] if notes is None else notes
        p = self.ppl
        total = (p["bits.intercept"] + p["bits.slope"] * (case.bits - BITS_PIVOT)
                 + p.get("size", 0.0) * math.log(case.params_b / SIZE_PIVOT_B)
                 + self._method_effect(case, notes, conservative) + self._family_effect(case, notes, conservative))
        for option in OPTIONS:
            if getattr(case, option):
                total += p.get(f"option.{option}", 0.0)
        return total

    def log_relative(self, case: Case, notes: list[str] | None = None, conservative: bool = True) -> float:
        """ln of the relative perplexity increase of `case`'s weights (KV cache not included)."""
        return math.log(relative_of(math.exp(self.log_dce(case, notes, conservative))))

    # -- KL divergence and accuracy
    def kl_divergence(self, relative: float) -> float:
        if relative <= 0:
            return 0.0
        return math.exp(self.kl["intercept"] + self.kl["slope"] * math.log(math.log1p(relative)))

    def accuracy_loss(self, case: Case, kind: str, relative: float, notes: list[str] | None = None,
                      conservative: bool = True) -> float:
        """Points of recovery lost on a task kind (100 - recovery %). A family without accuracy rows takes
        the most sensitive fitted family's offset (conservative) or 0, the prior's centre (central)."""
        if relative <= 0:
            return 0.0
        fitted = self.accuracy
        family = fitted.get(f"family.{case.family}")
        if family is None:
            offsets = [v for k, v in fitted.items() if k.startswith("family.")]
            family = max(offsets, default=0.0) if conservative else 0.0
            if notes is not None and conservative:
                notes.append(f"family {case.family} has no accuracy rows: the most sensitive fitted family's "
                             f"offset ({family:+.2f} in ln)")
        task = fitted.get(f"task.{kind}")
        if task is None:  # no rows of this kind (a fold of the out-of-sample check): the worst kind fitted
            task = max(v for k, v in fitted.items() if k.startswith("task."))
        exponent = (task + fitted["damage"] * math.log(math.log1p(relative))
                    + fitted["size"] * math.log(case.params_b / SIZE_PIVOT_B) + family
                    + fitted.get(f"method.{case.method}", 0.0))
        return math.exp(exponent)

    # -- all figures
    def predict(self, case: Case, kv_relative: float = 0.0) -> Prediction:
        """Every figure for `case`; `kv_relative` adds a KV-cache precision's relative ppl increase."""
        notes: list[str] = []
        relative = math.exp(self.log_relative(case, notes)) + kv_relative
        return self.bands_for(case, relative, notes)

    def bands_for(self, case: Case, relative: float, notes: list[str]) -> Prediction:
        low, high = self.bands["ppl"]
        kl = self.kl_divergence(relative)
        kl_low, kl_high = self.bands["kl"]
        recovery = {}
        for kind in TASK_KINDS:
            loss = self.accuracy_loss(case, kind, relative, notes)
            below, above = self.bands[kind]  # residual points (measured - predicted loss) at 10% and 90%
            recovery[kind] = _hull(100.0 - loss, 100.0 - loss - above, 100.0 - loss - below)
        return Prediction(_hull(relative, relative * math.exp(low), relative * math.exp(high)),
                          _hull(kl, kl * math.exp(kl_low), kl * math.exp(kl_high)), recovery, sorted(set(notes)))


def _hull(value: float, low: float, high: float) -> Band:
    """The band of the out-of-sample residuals, widened to hold the central value (where the model was
    biased out of sample, e.g. KL under-predicted, its band alone would lie on one side)."""
    return Band(value, min(value, low), max(value, high))


def from_document(document: dict) -> QualityModel:
    bands = {name: (float(v["p10"]), float(v["p90"])) for name, v in document["bands"].items()}
    return QualityModel({k: float(v) for k, v in document["ppl"].items()},
                        {k: float(v) for k, v in document["kl"].items()},
                        {k: float(v) for k, v in document["accuracy"].items()}, bands,
                        {k: int(v) for k, v in document.get("rows", {}).items()})


@lru_cache(maxsize=1)
def shipped() -> QualityModel:
    """The model in catalogs/quality_model.toml."""
    text = resources.files("quantplan.catalogs").joinpath("quality_model.toml").read_text()
    return from_document(tomllib.loads(text))
