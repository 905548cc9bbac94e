"""Prices by provider: each device's default (the median across providers) and one provider's table."""

from __future__ import annotations

import statistics
from typing import Iterable

from pydantic import BaseModel, ConfigDict

from .catalog import normalise
from .errors import QuantplanError
from .specs import GPUSpec, PriceSpec

MEDIAN = "median"


def provider_key(name: str) -> str:
    """How provider names are matched: case and spacing do not matter."""
    return normalise(name)


def group_offers(prices: Iterable[PriceSpec]) -> dict[str, list[PriceSpec]]:
    """Offers by device id, each list sorted by provider; one provider listing a device twice is an error."""
    grouped: dict[str, list[PriceSpec]] = {}
    for price in prices:
        offers = grouped.setdefault(price.gpu, [])
        if any(provider_key(o.provider) == provider_key(price.provider) for o in offers):
            raise QuantplanError(f"two prices for {price.gpu!r} from provider {price.provider!r}")
        offers.append(price)
    return {gpu: sorted(offers, key=lambda o: provider_key(o.provider)) for gpu, offers in sorted(grouped.items())}


def median_price(offers: list[PriceSpec]) -> PriceSpec:
    """The default price of a device: its only offer, or the median of several (mean of the middle two)."""
    if len(offers) == 1:
        return offers[0]
    usd = round(statistics.median(o.usd_per_hour for o in offers), 6)
    listed = ", ".join(f"{o.provider} ${o.usd_per_hour:g}" for o in offers)
    dates = sorted({o.as_of for o in offers})
    return PriceSpec(gpu=offers[0].gpu, usd_per_hour=usd, provider=f"median of {len(offers)} providers",
                     as_of=dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}",
                     source=f"derived: median of {listed} (catalogs/prices.toml)")


def defaults(offers: dict[str, list[PriceSpec]]) -> dict[str, PriceSpec]:
    return {gpu: median_price(listed) for gpu, listed in offers.items()}


def providers(offers: dict[str, list[PriceSpec]]) -> list[str]:
    return sorted({provider_key(o.provider) for listed in offers.values() for o in listed})


def for_provider(offers: dict[str, list[PriceSpec]], defaults_by_gpu: dict[str, PriceSpec],
                 gpus: Iterable[GPUSpec], provider: str) -> dict[str, PriceSpec]:
    """`provider`'s price for each device it lists; devices one owns (rentable = false) keep their default."""
    key = provider_key(provider)
    known = providers(offers)
    if key not in known:
        raise QuantplanError(f"unknown provider {provider!r}; known: {', '.join(known)}")
    chosen = {gpu: o for gpu, listed in offers.items() for o in listed if provider_key(o.provider) == key}
    for gpu in gpus:
        if not gpu.rentable and gpu.id in defaults_by_gpu:
            chosen.setdefault(gpu.id, defaults_by_gpu[gpu.id])
    return chosen


class DevicePrice(BaseModel):
    model_config = ConfigDict(frozen=True)

    gpu: str
    usd_per_hour: float
    provider: str
    as_of: str
    source: str


class PricesUsed(BaseModel):
    """Which prices a plan used: the basis (a provider, or the median), each device's price, what was left out."""

    model_config = ConfigDict(frozen=True)

    basis: str  # "median across providers", "provider lambda"
    devices: list[DevicePrice]
    not_offered: list[str] = []  # devices the chosen provider does not list (left out of the plan)

    def line(self) -> str:
        shown = "; ".join(f"{d.gpu} ${d.usd_per_hour:.4g}/h ({d.provider}, {d.as_of})" for d in self.devices)
        left = f"; not offered, left out: {', '.join(self.not_offered)}" if self.not_offered else ""
        return f"Prices: {self.basis}: {shown or 'none'}{left}"


def prices_used(prices: dict[str, PriceSpec], provider: str | None, gpus: Iterable[str],
                candidates: Iterable[str] = ()) -> PricesUsed:
    """The record of prices for `gpus` (the plan's devices); `candidates` not priced count as not offered."""
    basis = f"provider {provider_key(provider)}" if provider else "median across providers (catalogs/prices.toml)"
    devices = [DevicePrice(gpu=g, usd_per_hour=prices[g].usd_per_hour, provider=prices[g].provider,
                           as_of=prices[g].as_of, source=prices[g].source) for g in sorted(set(gpus)) if g in prices]
    missing = sorted({g for g in candidates if g not in prices}) if provider else []
    return PricesUsed(basis=basis, devices=devices, not_offered=missing)
