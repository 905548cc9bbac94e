"""Shared behaviour of device plugins: capacity, bandwidth, peak FLOPs and price of a device."""

from __future__ import annotations

from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, Step
from quantplan.solver.catalog import builtin_catalog
from quantplan.solver.specs import GPUSpec, PriceSpec
from quantplan.solver.terms import Term


class DevicePlugin:
    """Declares `devices` and contributes their terms to candidates that use them."""

    def __init__(self, name: str, devices: list[GPUSpec], prices: list[PriceSpec] = ()) -> None:
        self.name = name
        self.devices = list(devices)
        self.prices = list(prices)
        self._ids = {d.id for d in self.devices}

    def owns(self, config: Config) -> bool:
        return self.owns_device(config)

    def owns_device(self, config: Config) -> bool:
        """The device terms apply (a subclass may own more configurations for other reasons)."""
        return config.gpu.id in self._ids

    @hookimpl
    def quantplan_gpus(self) -> list[GPUSpec]:
        return self.devices

    @hookimpl
    def quantplan_prices(self) -> list[PriceSpec]:
        return self.prices

    @hookimpl
    def quantplan_incompatibility(self, config: Config) -> list[str]:
        gpu = config.gpu
        if not self.owns_device(config) or config.gpus <= gpu.max_devices_per_node:
            return []
        return [f"{gpu.id} has at most {gpu.max_devices_per_node} per node; asked for {config.gpus}"]

    @hookimpl
    def quantplan_memory_terms(self, config: Config, context_tokens: int) -> list[Term]:
        if not self.owns_device(config):
            return []
        gpu = config.gpu
        found = [Term(q.CAPACITY, gpu.usable_gb * 1e9, self.name,
                      f"{gpu.id} usable memory {gpu.usable_gb:g} GB")]
        if config.hybrid:
            found.append(Term(q.HOST_CAPACITY, gpu.host_memory_gb * 1e9 * config.gpus, self.name,
                              f"{gpu.id} host RAM {gpu.host_memory_gb:g} GB per device"))
        return found

    @hookimpl
    def quantplan_step_terms(self, config: Config, step: Step) -> list[Term]:
        if not self.owns_device(config):
            return []
        gpu, dtype = config.gpu, config.execution.compute_dtype
        found = [
            Term(q.BANDWIDTH, gpu.bandwidth_tb_s * 1e12, self.name,
                 f"{gpu.id} memory bandwidth {gpu.bandwidth_tb_s:g} TB/s", step.phase),
            Term(q.PEAK_FLOPS, gpu.peak_tflops(dtype) * 1e12, self.name,
                 f"{gpu.id} dense {dtype} {gpu.peak_tflops(dtype):g} TFLOPS", step.phase),
        ]
        if config.hybrid:
            found.append(Term(q.HOST_BANDWIDTH, gpu.host_bandwidth_tb_s * 1e12, self.name,
                              f"{gpu.id} host RAM bandwidth {gpu.host_bandwidth_tb_s:g} TB/s", step.phase))
        return found

    @hookimpl
    def quantplan_cost_terms(self, config: Config, prices: dict[str, PriceSpec]) -> list[Term]:
        if not self.owns_device(config):
            return []
        price = prices.get(config.gpu.id)
        if price is None:
            return []
        return [Term(q.COST, price.usd_per_hour * config.gpus, self.name,
                     f"{config.gpus} x {config.gpu.id} at ${price.usd_per_hour:g}/h ({price.provider}, {price.as_of})")]


def catalog_devices(name: str, keep) -> DevicePlugin:
    """A device plugin for the catalogs/gpus.toml rows `keep(row)` selects, with their prices."""
    gpus = [g for g in builtin_catalog("gpus")["gpu"] if keep(g)]
    ids = {g.id for g in gpus}
    return DevicePlugin(name, gpus, [p for p in builtin_catalog("prices")["price"] if p.gpu in ids])
