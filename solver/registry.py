"""Everything the plugins declared, collected, validated and sorted: the solver's view of the world."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .candidates import QualityBook
from .catalog import Registry
from .errors import QuantplanError
from .prices import defaults, for_provider, group_offers
from .specs import (
    PLAUSIBLE_BOUNDS,
    FamilyQualitySpec,
    FrameworkSpec,
    GPUSpec,
    KVCacheSpec,
    KVQualitySpec,
    MethodQualitySpec,
    MethodSpec,
    ModelSpec,
    PriceSpec,
    UseCaseSpec,
)


def collect_specs(plugins, hook_name: str, kind: str, record_type: type) -> list:
    """Flatten one declaration hook's results; reject wrong types and two providers of one id."""
    owner: dict[str, str] = {}
    found = []
    for plugin_name, records in plugins.collect(hook_name):
        for record in records:
            if not isinstance(record, record_type):
                raise QuantplanError(f"plugin {plugin_name!r} returned a {type(record).__name__} from "
                                     f"{hook_name}; expected {record_type.__name__}")
            key = getattr(record, "id", None) or f"{record.gpu} from {record.provider}"  # prices: one per provider
            if key in owner:
                raise QuantplanError(f"{kind} {key!r} is provided by both {owner[key]!r} and {plugin_name!r}")
            owner[key] = plugin_name
            found.append(record)
    return sorted(found, key=lambda r: getattr(r, "id", None) or r.gpu)


@dataclass
class World:
    """Specs from all plugins, plus the plugin set that contributes terms."""

    plugins: object
    gpus: Registry[GPUSpec]
    methods: Registry[MethodSpec]
    kv_caches: Registry[KVCacheSpec]
    frameworks: Registry[FrameworkSpec]
    models: Registry[ModelSpec]
    prices: dict[str, PriceSpec]  # each device's default: the median of its providers' prices
    quality: QualityBook
    providers: dict[str, str] = field(default_factory=dict)
    offers: dict[str, list[PriceSpec]] = field(default_factory=dict)  # every provider's price, by device
    measured_quality: dict = field(default_factory=dict)  # (model id, method id) -> MeasuredQuality (solve --quality)

    def with_prices(self, overrides: dict[str, float], provider: str | None = None) -> dict[str, PriceSpec]:
        """Default prices, or `provider`'s (`--provider NAME`), with `--price DEV=USD` applied (ids or aliases)."""
        if provider:
            prices = for_provider(self.offers, self.prices, self.gpus, provider)
        else:
            prices = dict(self.prices)
        for name, usd in overrides.items():
            gpu = self.gpus.get(name)
            lowest, highest, _ = PLAUSIBLE_BOUNDS["PriceSpec"]["usd_per_hour"]
            if not (math.isfinite(usd) and lowest <= usd <= highest):
                raise QuantplanError(f"--price {name}={usd:g}: give a finite price, {lowest:g} to {highest:g} $ "
                                     f"per device-hour")
            prices[gpu.id] = PriceSpec(gpu=gpu.id, usd_per_hour=usd, provider="user", as_of="given",
                                       source="--price on the command line or [prices] in the scenario")
        return prices


def build_world(plugins) -> World:
    gpus = collect_specs(plugins, "quantplan_gpus", "device", GPUSpec)
    quality = QualityBook()
    for _, records in plugins.collect("quantplan_quality_data"):
        for record in records:
            if isinstance(record, MethodQualitySpec):
                quality.methods[record.method] = record
            elif isinstance(record, FamilyQualitySpec):
                quality.families[record.family] = record
            elif isinstance(record, KVQualitySpec):
                quality.kv[record.kv_dtype] = record
            elif isinstance(record, UseCaseSpec):
                quality.use_cases[record.id] = record
    world = World(
        plugins=plugins,
        gpus=Registry("device", gpus),
        methods=Registry("method", collect_specs(plugins, "quantplan_methods", "method", MethodSpec)),
        kv_caches=Registry("KV-cache dtype", collect_specs(plugins, "quantplan_kv_cache_dtypes", "KV-cache dtype",
                                                           KVCacheSpec)),
        frameworks=Registry("framework", collect_specs(plugins, "quantplan_frameworks", "framework", FrameworkSpec)),
        models=Registry("model", collect_specs(plugins, "quantplan_models", "model", ModelSpec)),
        prices={},
        quality=quality,
        offers=group_offers(collect_specs(plugins, "quantplan_prices", "price for", PriceSpec)),
    )
    world.prices = defaults(world.offers)
    for gpu_id in world.prices:
        if gpu_id not in world.gpus.by_id:
            raise QuantplanError(f"a price is given for unknown device {gpu_id!r}")
    from quantplan.plugins.builtin.calibration import CalibrationPlugin  # [[calibration]] rows name known ids

    for _, plugin in plugins.manager.list_name_plugin():
        if isinstance(plugin, CalibrationPlugin):
            plugin.check(world)
    return world


def load_world(catalogs: Iterable[Path | str] = (), extra: Iterable[object] = (), entry_points: bool = True) -> World:
    from quantplan.plugins.manager import make_plugin_set

    return build_world(make_plugin_set(catalogs=catalogs, extra=extra, entry_points=entry_points))
