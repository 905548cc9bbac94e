"""Calibrated efficiencies from a user catalog's `[[calibration]]` rows (written by `quantplan calibrate`).

A row names a device, a framework and a method and gives that framework's efficiencies there. The
framework's own plugin still contributes its catalog terms; this plugin adds the correction that turns
them into the calibrated values: a factor (calibrated / catalog share) on the bandwidth and prefill
shares, which multiply, and the difference in per-step overhead, which adds. The per-request overhead
lives in the scheduler record, so a calibrated row answers `quantplan_scheduling` first (tryfirst) with
the framework's own scheduler and the calibrated overhead. Configurations the rows do not name are
untouched, so one overlay can calibrate a new device without moving any other plan.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, Step
from quantplan.solver.specs import CalibrationSpec, FrameworkSpec, GPUSpec
from quantplan.solver.terms import Term

if TYPE_CHECKING:  # the serving model (and numpy) only when a plan is evaluated, not for `list` or `plugins`
    from quantplan.solver.serving import Scheduling


def catalog_bandwidth_share(framework: FrameworkSpec, gpu: GPUSpec) -> float:
    """The framework's catalog share of `gpu`'s bandwidth (as its plugin applies it)."""
    return framework.bandwidth_efficiency.get(gpu.device_class, min(framework.bandwidth_efficiency.values()))


def catalog_prefill_share(framework: FrameworkSpec, gpu: GPUSpec) -> float:
    """The framework's catalog share of the tensor peak for prompt tokens on `gpu`'s device class."""
    return framework.prefill_efficiency_by_class.get(gpu.device_class, framework.prefill_efficiency)


def catalog_values(framework: FrameworkSpec, gpu: GPUSpec) -> dict[str, float]:
    """The four calibrated figures as the framework's catalog row gives them on `gpu`."""
    return {"bandwidth_efficiency": catalog_bandwidth_share(framework, gpu),
            "prefill_efficiency": catalog_prefill_share(framework, gpu),
            "step_overhead_ms": framework.step_overhead_ms,
            "request_overhead_ms": framework.request_overhead_ms}


class CalibrationPlugin:
    """Applies `[[calibration]]` rows to the configurations they name."""

    def __init__(self, name: str, rows: list[CalibrationSpec]) -> None:
        self.name = name
        self.rows = {(r.gpu, r.framework, r.method): r for r in rows}

    def check(self, world) -> None:
        """Every row names a known device, framework and method (else one error naming the row)."""
        from quantplan.solver.errors import QuantplanError

        for gpu, framework, method in self.rows:
            for registry, name, kind in ((world.gpus, gpu, "gpu"), (world.frameworks, framework, "framework"),
                                         (world.methods, method, "method")):
                if name not in registry.by_id:
                    raise QuantplanError(f"{self.name}: [[calibration]] {kind} {name!r} is not a known {kind} id")

    def row(self, config: Config) -> CalibrationSpec | None:
        return self.rows.get((config.gpu.id, config.framework.id, config.method.id))

    def owns(self, config: Config) -> bool:
        return self.row(config) is not None

    @hookimpl
    def quantplan_step_terms(self, config: Config, step: Step) -> list[Term]:
        row = self.row(config)
        if row is None:
            return []
        framework, gpu = config.framework, config.gpu
        where = f"calibrated {framework.id} on {gpu.id} at {config.method.id} ({self.name})"
        found = []
        if row.bandwidth_efficiency is not None:
            catalog = catalog_bandwidth_share(framework, gpu)
            found.append(Term(q.BANDWIDTH_EFFICIENCY, row.bandwidth_efficiency / catalog, self.name,
                              f"{where}: bandwidth share {row.bandwidth_efficiency:.4g} (catalog {catalog:.4g})",
                              step.phase))
        if row.prefill_efficiency is not None and step.phase == "prefill":
            catalog = catalog_prefill_share(framework, gpu)
            found.append(Term(q.COMPUTE_EFFICIENCY, row.prefill_efficiency / catalog, self.name,
                              f"{where}: prefill share {row.prefill_efficiency:.4g} (catalog {catalog:.4g})",
                              step.phase))
        if row.step_overhead_ms is not None:
            delta = (row.step_overhead_ms - framework.step_overhead_ms) / 1e3
            found.append(Term(q.OVERHEAD, delta * step.passes, self.name,
                              f"{where}: per-step overhead {row.step_overhead_ms:.4g} ms "
                              f"(catalog {framework.step_overhead_ms:g} ms)", step.phase, correction=True))
        return found

    @hookimpl(tryfirst=True)
    def quantplan_scheduling(self, config: Config) -> Scheduling | None:
        row = self.row(config)
        if row is None or row.request_overhead_ms is None:
            return None
        from quantplan.plugins.builtin.frameworks import FrameworkPlugin

        base = FrameworkPlugin(config.framework).quantplan_scheduling(config)
        return replace(base, request_overhead_s=row.request_overhead_ms / 1e3,
                       source=f"{base.source}; per-request overhead {row.request_overhead_ms:.4g} ms calibrated "
                              f"({self.name})")
