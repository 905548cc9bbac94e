"""The overlay catalog `quantplan calibrate` writes: the user's catalogs' rows plus `[[calibration]]` rows.

Plain TOML written by hand (the records are flat: strings, numbers, lists, one level of tables), so the
file reads back through `--catalog` (solver/catalog.py) with no extra dependency.
"""

from __future__ import annotations

import json
import math

from .catalog import user_catalog
from .specs import CalibrationSpec


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _table(name: str, record) -> str:
    data = record.model_dump(exclude_defaults=True)
    return f"[[{name}]]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in data.items()
                                     if value is not None)


def overlay_text(found, catalogs=()) -> str:
    """The overlay for a `Calibration` (solver/calibrate.py): the given catalogs' rows, their calibrations of
    other combinations, and one new `[[calibration]]` row per fitted device, framework and method."""
    parts = ["# Written by quantplan calibrate: your catalogs' rows plus efficiencies fitted to your measurements.\n"
             "# Use it in their place: quantplan solve ... --catalog THIS_FILE\n", "schema_version = 1\n"]
    new = {(s["gpu"], s["framework"], s["method"]) for s in found.scopes}
    for path in catalogs:
        tables = user_catalog(path)
        for name in ("gpu", "price", "model", "calibration"):
            for record in tables.get(name, []):
                if name == "calibration" and (record.gpu, record.framework, record.method) in new:
                    continue  # replaced by this calibration
                parts.append(_table(name, record))
    for scope in found.scopes:
        summary = "; ".join(f"{e['metric']} {e['statistic']}: median |error| {e['before_median']:.1%} -> "
                            f"{e['after_median']:.1%}" for e in scope["errors"] if e["fitted"])
        values = {k: _round(scope["values"][k]) for k in scope["fitted"]}
        row = CalibrationSpec(gpu=scope["gpu"], framework=scope["framework"], method=scope["method"], **values,
                              fitted_on=", ".join(scope["files"]) + f" ({scope['figures']} figures)",
                              source=f"quantplan calibrate on the user's measurements; {summary}")
        parts.append(_table("calibration", row))
    return "\n".join(parts)


def _round(value: float) -> float:
    return float(f"{value:.4g}")
