"""Error bars: the typical error `quantplan validate` found for each kind of figure and framework,
and whether a configuration lies inside what the validation data covers.

catalogs/error_bars.toml is written by `quantplan validate --write-error-bars` (a test checks that
the shipped file matches a fresh validation run), so every error bar traces back to measured rows.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

FIGURE_GROUPS = {"tpot_ms": "decode", "tokens_per_s": "decode", "ttft_ms": "ttft", "memory_gb_per_gpu": "memory"}


class Bar(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str
    framework: str  # "*" for all frameworks
    rows: int = Field(ge=1)
    median_ape: float
    p90_ape: float


class Coverage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    framework: str
    device_class: str
    max_batch: int
    max_gpus: int
    rows: int
    vendor: str = "nvidia"  # lower-case GPU vendor of the rows (an engine measured on NVIDIA says nothing of AMD)
    # the link between the GPUs of the rows' multi-GPU replicas ("*": single-GPU rows, or a table from before
    # links were told apart): tensor parallelism measured over NVLink says little of it over PCIe
    interconnect: str = "*"


class ErrorBars(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    generated_by: str
    bar: list[Bar]
    covered: list[Coverage]

    def lookup(self, group: str, framework: str) -> tuple[Bar | None, str]:
        for bar in self.bar:
            if bar.group == group and bar.framework == framework:
                return bar, f"{bar.rows} {framework} rows"
        for bar in self.bar:
            if bar.group == group and bar.framework == "*":
                return bar, f"no {framework} rows: all {bar.rows} {group} rows"
        return None, "no validation rows"

    def coverage(self, framework: str, device_class: str, batch: int, gpus: int, vendor: str = "nvidia",
                 interconnect: str = "*") -> list[str]:
        """Reasons the configuration lies outside the validation data; empty when it is inside. Several GPUs per
        replica count as measured only where rows ran that many over the same link (`interconnect`)."""
        rows = [c for c in self.covered if c.framework == framework and c.device_class == device_class
                and c.vendor in (vendor.lower(), "*")]
        if device_class in ("apple", "cpu"):  # the vendor is the class there
            rows = [c for c in self.covered if c.framework == framework and c.device_class == device_class]
        if not rows:
            where = f"{vendor} {device_class}" if device_class not in ("apple", "cpu") and vendor.lower() != "nvidia" \
                else device_class
            return [f"no speed measurements of {framework} on {where} devices"]
        found = []
        if batch > max(c.max_batch for c in rows):
            found.append(f"batch {batch} above the largest measured for {framework} ({max(c.max_batch for c in rows)})")
        linked = [c.max_gpus for c in rows if c.interconnect in (interconnect, "*")]
        if gpus > max(linked, default=1):
            if max(c.max_gpus for c in rows) >= gpus:  # measured that wide, over another link only
                others = sorted({c.interconnect for c in rows if c.max_gpus >= gpus} - {"*"})
                found.append(f"{gpus} GPUs over {interconnect}: {framework} measured that wide over "
                             f"{', '.join(others)} only")
            else:
                found.append(f"{gpus} GPUs above the most measured for {framework} ({max(c.max_gpus for c in rows)})")
        return found

    def factor(self, group: str, framework: str, margin: str) -> float:
        """1 + the typical error to plan against: 'median' or 'p90' (1.0 for 'none')."""
        if margin == "none":
            return 1.0
        bar, _ = self.lookup(group, framework)
        if bar is None:
            return 1.0
        return 1.0 + (bar.median_ape if margin == "median" else bar.p90_ape)


def compute(checks: list, devices: dict[str, str], vendors: dict[str, str] | None = None,
            interconnects: dict[str, str] | None = None) -> ErrorBars:
    """Error bars and coverage from validation checks (`devices`: gpu id -> device class; `vendors`: gpu id ->
    lower-case vendor, NVIDIA where not given; `interconnects`: gpu id -> the link between its GPUs, which
    keys the coverage of multi-GPU rows)."""
    import numpy as np

    from .validate import TARGETS

    bars = []
    scored = [c for c in checks if c.error is not None and c.group in TARGETS]
    for group in sorted({c.group for c in scored}):
        in_group = [c for c in scored if c.group == group]
        for framework in ["*"] + sorted({c.framework for c in in_group}):
            errors = np.abs([c.error for c in in_group if framework in ("*", c.framework)])
            bars.append(Bar(group=group, framework=framework, rows=len(errors),
                            median_ape=round(float(np.median(errors)), 6),
                            p90_ape=round(float(np.percentile(errors, 90)), 6)))
    covered: dict[tuple[str, str], dict] = {}
    for check in scored:
        if check.group == "memory":
            continue
        link = (interconnects or {}).get(check.gpu, "*") if check.gpus > 1 else "*"
        key = (check.framework, devices.get(check.gpu, check.device_class), (vendors or {}).get(check.gpu, "nvidia"),
               link)
        entry = covered.setdefault(key, {"max_batch": 1, "max_gpus": 1, "rows": 0})
        entry["max_batch"] = max(entry["max_batch"], check.batch or 1024)
        entry["max_gpus"] = max(entry["max_gpus"], check.gpus)
        entry["rows"] += 1
    return ErrorBars(generated_by="quantplan validate --write-error-bars catalogs/error_bars.toml", bar=bars,
                     covered=[Coverage(framework=f, device_class=d, vendor=w, interconnect=i, **v)
                              for (f, d, w, i), v in sorted(covered.items())])


def to_toml(bars: ErrorBars) -> str:
    lines = ["# Typical prediction errors found by `quantplan validate` on catalogs/validation.csv.",
             "# Generated: do not edit by hand; regenerate with the command in generated_by.",
             "schema_version = 1", f'generated_by = "{bars.generated_by}"', ""]
    for bar in bars.bar:
        lines += ["[[bar]]", f'group = "{bar.group}"', f'framework = "{bar.framework}"', f"rows = {bar.rows}",
                  f"median_ape = {bar.median_ape}", f"p90_ape = {bar.p90_ape}", ""]
    for item in bars.covered:
        lines += ["[[covered]]", f'framework = "{item.framework}"', f'device_class = "{item.device_class}"',
                  f"max_batch = {item.max_batch}", f"max_gpus = {item.max_gpus}", f"rows = {item.rows}",
                  f'vendor = "{item.vendor}"', f'interconnect = "{item.interconnect}"', ""]
    return "\n".join(lines)


@lru_cache(maxsize=1)
def shipped() -> ErrorBars:
    with resources.files("quantplan.catalogs").joinpath("error_bars.toml").open("rb") as handle:
        return ErrorBars(**tomllib.load(handle))


def describe(framework: str, device_class: str, batch: int, gpus: int,
             vendor: str = "nvidia", interconnect: str = "*") -> tuple[dict, list[str]]:
    """Error bars for the figures a plan or estimate reports, and coverage warnings."""
    try:
        bars = shipped()
    except (FileNotFoundError, OSError):
        return {}, ["no error-bar table shipped"]
    table = {}
    for figure, group in FIGURE_GROUPS.items():
        bar, basis = bars.lookup(group, framework)
        if bar is not None:
            table[figure] = {"median_pct": round(bar.median_ape * 100, 1), "p90_pct": round(bar.p90_ape * 100, 1),
                             "basis": basis}
    return table, bars.coverage(framework, device_class, batch, gpus, vendor, interconnect)
