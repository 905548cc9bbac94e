"""Published quality points from catalogs/quality.toml: method and KV degradation, family sensitivity, use cases."""

from __future__ import annotations

from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver.catalog import builtin_catalog


class PublishedQuality:
    name = "published-quality"

    @hookimpl
    def quantplan_quality_data(self) -> list:
        tables = builtin_catalog("quality")
        return [row for key in ("method_quality", "family_quality", "kv_quality", "use_case")
                for row in tables.get(key, [])]


def plugin() -> PublishedQuality:
    return PublishedQuality()
