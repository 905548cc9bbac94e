"""A user's TOML catalog (`--catalog FILE`): more devices, prices, models and calibrations, no code."""

from __future__ import annotations

from pathlib import Path

from quantplan.plugins.builtin.calibration import CalibrationPlugin
from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.plugins.builtin.models import ModelPlugin
from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver.candidates import Config, QualityBook
from quantplan.solver.catalog import user_catalog
from quantplan.solver.specs import ModelSpec
from quantplan.solver.terms import Term


class UserCatalogPlugin(DevicePlugin):
    """Devices from the file get the same terms as built-in ones; models bring their baseline."""

    def __init__(self, path: Path | str, name: str | None = None) -> None:
        tables = user_catalog(path)
        super().__init__(name or f"catalog:{Path(path).name}", tables.get("gpu", []), tables.get("price", []))
        self.models = tables.get("model", [])
        self._model_ids = {m.id for m in self.models}
        self._baselines = ModelPlugin(self.name, self.models)
        rows = tables.get("calibration", [])
        self.calibration = CalibrationPlugin(f"calibration:{Path(path).name}", rows) if rows else None

    def owns(self, config: Config) -> bool:
        return super().owns(config) or config.model.id in self._model_ids

    @hookimpl
    def quantplan_models(self) -> list[ModelSpec]:
        return self.models

    @hookimpl
    def quantplan_quality_terms(self, config: Config, quality: QualityBook) -> list[Term]:
        return self._baselines.quantplan_quality_terms(config, quality)
