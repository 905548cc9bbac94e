"""Measured quality records (`quantplan quality -o FILE`) in place of predicted perplexity in `solve --quality`."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QuantplanError
from .quality_check import read_record


@dataclass(frozen=True)
class MeasuredQuality:
    """A measured relative perplexity increase of one model under one method (at one KV-cache format)."""

    model: str
    method: str
    kv_cache_dtype: str
    relative: float  # candidate ppl / baseline ppl - 1, on the user's text
    interval: tuple[float, float] | None
    kl_divergence: float
    source: str  # where it came from, for the plan's note

    def describe(self) -> str:
        spread = (f" [{self.interval[0] * 100:+.2f}%, {self.interval[1] * 100:+.2f}%]"
                  if self.interval else "")
        return (f"ppl increase of {self.model} / {self.method} measured: {self.relative * 100:+.2f}%{spread}, "
                f"KL {self.kl_divergence:.4f} ({self.source}); applied to the WikiText-2 baseline")


def load_measured(paths, world) -> dict[tuple[str, str], MeasuredQuality]:
    """Records by (model id, method id); the ids are checked against the catalogs."""
    found: dict[tuple[str, str], MeasuredQuality] = {}
    for path in paths:
        record = read_record(path)
        summary = record.get("summary")
        if not record.get("complete") or not summary:
            raise QuantplanError(f"--quality {path}: the run is unfinished: finish it with quantplan quality "
                                 f"--resume {path}")
        if not record.get("model") or not record.get("method"):
            raise QuantplanError(f"--quality {path}: the record names no model or method: measure with "
                                 f"quantplan quality --model ID --method ID")
        model, method = world.models.get(record["model"]).id, world.methods.get(record["method"]).id
        kv = world.kv_caches.get(record.get("kv_cache_dtype") or "fp16").id
        key = (model, method)
        if key in found:
            raise QuantplanError(f"--quality: two records for {model} / {method}")
        try:
            pct = summary.get("ci", {}).get("ppl_delta_pct")
            found[key] = MeasuredQuality(
                model, method, kv, float(summary["ppl_delta_pct"]) / 100.0,
                (pct[0] / 100.0, pct[1] / 100.0) if pct else None, float(summary["kl_divergence"]),
                f"{summary['documents']} documents, {path}" if summary.get("documents")
                else f"llama-perplexity log, {path}")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise QuantplanError(f"--quality {path}: the summary lacks {error} (edited by hand?)") from None
    return found
