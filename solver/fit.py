"""Fit the efficiency terms of frameworks and kernels to the validation rows (`quantplan fit`).

A handful of structural parameters (per framework: bandwidth share per device class, prefill share,
decode compute share, per-step overhead; per kernel: bandwidth and compute share) are fitted by
coordinate search on the robust mean of log(predicted / measured)^2 over the speed rows each one
touches. The search is deterministic; its output is what catalogs/frameworks.toml and methods.toml
carry, with the rows named in each efficiency_source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .catalog import Registry
from .registry import World
from .validate import GROUPS, Row, load_rows, predict, validation_world

# Not fitted: llama.cpp's consumer-GPU share. Its only rows are June-2023 builds on an RTX 4080,
# slower than current kernels (calibration README: build age matters); fitting them would make
# every current llama.cpp prediction too slow. They stay in the validation set as known misses.
MULTIPLIERS = (0.6, 0.75, 0.85, 0.93, 1.0, 1.07, 1.15, 1.3, 1.6)
HUBER = 0.5  # log-error beyond which a row counts linearly (old builds, odd rows do not dominate)


@dataclass(frozen=True)
class Parameter:
    kind: str  # "framework" or "method"
    id: str
    field: str  # a spec field, or "bandwidth_efficiency.<device class>"
    low: float
    high: float

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.id}.{self.field}"

    def read(self, world: World) -> float:
        spec = (world.frameworks if self.kind == "framework" else world.methods).get(self.id)
        if "." in self.field:
            attribute, key = self.field.split(".", 1)
            return getattr(spec, attribute)[key]
        return getattr(spec, self.field)

    def write(self, world: World, value: float) -> World:
        registry = world.frameworks if self.kind == "framework" else world.methods
        spec = registry.get(self.id)
        if "." in self.field:
            attribute, key = self.field.split(".", 1)
            update = {attribute: {**getattr(spec, attribute), key: value}}
        else:
            update = {self.field: value}
        specs = [s if s.id != self.id else spec.model_copy(update=update) for s in registry]
        kind = "frameworks" if self.kind == "framework" else "methods"
        return replace(world, **{kind: Registry(registry.kind, specs)})

    def touches(self, row: Row, world: World) -> bool:
        if self.kind == "method":
            return row.method == self.id
        if row.framework != self.id:
            return False
        if "." in self.field:
            return world.gpus.get(row.gpu).device_class == self.field.split(".", 1)[1]
        return True


DEFAULT_PARAMETERS = (
    Parameter("framework", "tensorrt-llm", "bandwidth_efficiency.datacenter", 0.4, 0.95),
    Parameter("framework", "tensorrt-llm", "step_overhead_ms", 0.05, 5.0),
    Parameter("framework", "tensorrt-llm", "prefill_efficiency", 0.2, 0.9),
    Parameter("framework", "tensorrt-llm", "decode_compute_efficiency", 0.2, 0.95),
    Parameter("framework", "llama.cpp", "prefill_efficiency_by_class.consumer", 0.1, 0.95),
    Parameter("framework", "llama.cpp", "int8_kernel_efficiency", 0.05, 1.0),
    Parameter("framework", "vllm", "decode_compute_efficiency", 0.2, 0.95),
    Parameter("framework", "sglang", "decode_compute_efficiency", 0.2, 0.95),
    Parameter("method", "fp8", "compute_efficiency", 0.3, 1.2),
    Parameter("method", "awq-int4", "bandwidth_efficiency", 0.3, 1.2),
    Parameter("method", "awq-int4", "compute_efficiency", 0.2, 1.2),
    Parameter("method", "nvfp4", "compute_efficiency", 0.2, 1.2),
)


def _loss(world: World, rows: list[Row]) -> float:
    total = 0.0
    for row in rows:
        try:
            predicted = predict(world, row)
        except ValueError:
            continue
        error = abs(math.log(max(predicted, 1e-12) / row.value))
        total += error * error if error <= HUBER else HUBER * (2 * error - HUBER)
    return total / max(len(rows), 1)


def fit(parameters=DEFAULT_PARAMETERS, rounds: int = 2, world: World | None = None,
        progress=None) -> tuple[World, list[dict]]:
    """Coordinate search; returns the fitted world and, per parameter, old/new value and its rows."""
    world = world or validation_world()
    rows = [r for r in load_rows() if GROUPS.get(r.metric) in ("decode", "ttft")]
    report = {p.name: {"parameter": p.name, "before": p.read(world)} for p in parameters}
    for _ in range(rounds):
        for parameter in parameters:
            touched = [r for r in rows if parameter.touches(r, world)]
            if not touched:
                continue
            current = parameter.read(world)
            best_value, best_loss = current, _loss(world, touched)
            for factor in MULTIPLIERS:
                value = round(min(max(current * factor, parameter.low), parameter.high), 4)
                if value == current:
                    continue
                loss = _loss(parameter.write(world, value), touched)
                if loss < best_loss - 1e-12:
                    best_value, best_loss = value, loss
            world = parameter.write(world, best_value)
            report[parameter.name].update(after=best_value, rows=[r.id for r in touched], loss=best_loss)
            if progress:
                progress(parameter.name)
    return world, list(report.values())
