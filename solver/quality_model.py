"""Quality model v2: perplexity increase, KL divergence and task recovery of a quantized model.

Three figures, all from the parameters `quantplan fit-quality` writes to catalogs/quality_model.toml:

  relative ppl increase  rel = exp(m[method] + f[family] + s[family] * ln(N / 8B) + options)
  mean KL divergence      kl = exp(k0 + k1 * ln(rel))                      (nats per token)
  task recovery (%)      100 - exp(t[task] + g * ln(rel) + h * ln(N / 8B) + a[family] + d[method])

m[method] of a method without perplexity rows sits on the fitted bits line c0 + c1 * (bits - 4.5) plus
a conservative margin; a family without rows takes the most sensitive fitted family. Either is flagged.
Each figure carries a 10th-90th percentile band from the out-of-sample (leave-one-source-out) errors.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from .quality_data import TASK_KINDS

REFERENCE_FAMILY = "llama-2"
SIZE_PIVOT_B = 8.0
OPTIONS = ("calibrated", "per_channel", "act_order", "long_context")


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
    """Names and values of the terms of ln(rel) for `case` (parameter name -> multiplier)."""
    found = {f"method.{case.method}": 1.0, f"size.{case.family}": math.log(case.params_b / SIZE_PIVOT_B)}
    if case.family != REFERENCE_FAMILY:
        found[f"family.{case.family}"] = 1.0
    for option in OPTIONS:
        if getattr(case, option):
            found[f"option.{option}"] = 1.0
    return found


def accuracy_features(case: Case, kind: str, log_rel: float) -> dict[str, float]:
    """Terms of ln(accuracy loss in points of recovery) for `case` on a task kind."""
    return {f"task.{kind}": 1.0, "damage": log_rel, "size": math.log(case.params_b / SIZE_PIVOT_B),
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
        key = f"method.{case.method}"
        if key in self.ppl:
            return self.ppl[key]
        line = self.ppl["bits.intercept"] + self.ppl["bits.slope"] * (case.bits - 4.5)
        margin = self.ppl.get("bits.margin", 0.0) if conservative else 0.0
        notes.append(f"method {case.method} has no perplexity rows: conservative estimate from its "
                     f"{case.bits:g} bits/weight (fitted bits line + {margin:.2f} in ln)")
        return line + margin

    def _family_effect(self, case: Case, notes: list[str]) -> float:
        size = math.log(case.params_b / SIZE_PIVOT_B)
        known = sorted({name.split(".", 1)[1] for name in self.ppl if name.startswith("size.")})
        if f"size.{case.family}" in self.ppl:
            return self.ppl.get(f"family.{case.family}", 0.0) + self.ppl[f"size.{case.family}"] * size
        worst = max(known, key=lambda f: self.ppl.get(f"family.{f}", 0.0) + self.ppl[f"size.{f}"] * size)
        notes.append(f"family {case.family} has no quality rows: conservative estimate (the most sensitive "
                     f"fitted family at {case.params_b:g}B, {worst})")
        return self.ppl.get(f"family.{worst}", 0.0) + self.ppl[f"size.{worst}"] * size

    def log_relative(self, case: Case, notes: list[str] | None = None, conservative: bool = True) -> float:
        """ln of the relative perplexity increase of `case`'s weights (KV cache not included).
        `conservative`: a method without rows gets the bits line plus a margin (False: the line)."""
        notes = [] if notes is None else notes
        total = self._method_effect(case, notes, conservative) + self._family_effect(case, notes)
        for option in OPTIONS:
            if getattr(case, option):
                total += self.ppl.get(f"option.{option}", 0.0)
        return total

    # -- KL divergence and accuracy
    def kl_divergence(self, relative: float) -> float:
        if relative <= 0:
            return 0.0
        return math.exp(self.kl["intercept"] + self.kl["slope"] * math.log(relative))

    def accuracy_loss(self, case: Case, kind: str, relative: float, notes: list[str] | None = None) -> float:
        """Points of recovery lost on a task kind (100 - recovery %)."""
        if relative <= 0:
            return 0.0
        fitted = self.accuracy
        family = fitted.get(f"family.{case.family}")
        if family is None:
            family = max((v for k, v in fitted.items() if k.startswith("family.")), default=0.0)
            if notes is not None:
                notes.append(f"family {case.family} has no accuracy rows: the most sensitive fitted family's "
                             f"offset ({family:+.2f} in ln)")
        task = fitted.get(f"task.{kind}")
        if task is None:  # no rows of this kind (a fold of the out-of-sample check): the worst kind fitted
            task = max(v for k, v in fitted.items() if k.startswith("task."))
        exponent = (task + fitted["damage"] * math.log(relative)
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
