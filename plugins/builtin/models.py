"""Models from catalogs/models.toml, and each model's perplexity baseline."""

from __future__ import annotations

from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, QualityBook
from quantplan.solver.catalog import builtin_catalog
from quantplan.solver.specs import ModelSpec
from quantplan.solver.terms import Term


class ModelPlugin:
    def __init__(self, name: str = "model-catalog", models: list[ModelSpec] | None = None) -> None:
        self.name = name
        self.models = builtin_catalog("models")["model"] if models is None else models
        self._ids = {m.id for m in self.models}

    def owns(self, config: Config) -> bool:
        return config.model.id in self._ids

    @hookimpl
    def quantplan_models(self) -> list[ModelSpec]:
        return self.models

    @hookimpl
    def quantplan_quality_terms(self, config: Config, quality: QualityBook) -> list[Term]:
        if config.model.id not in self._ids:
            return []
        model = config.model
        return [Term(q.PPL_BASELINE, model.wikitext2_ppl, self.name,
                     f"{model.id} FP16 WikiText-2 ppl {model.wikitext2_ppl:g} ({model.ppl_source})")]


def plugin() -> ModelPlugin:
    return ModelPlugin()
