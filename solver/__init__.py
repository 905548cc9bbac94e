"""The domain: schemas, estimators, candidate space, the integer program, plans and sweeps.

`from quantplan.solver import solve` plans a deployment; `estimate` predicts one configuration.
"""

from __future__ import annotations

from typing import Any

__all__ = ["solve", "estimate", "DeploymentConstraints", "Scenario", "TrafficClass", "Plan", "price_sweep"]


def __getattr__(name: str) -> Any:
    """Lazy exports: plugins import solver submodules, so the package must not import them eagerly."""
    if name in ("solve", "estimate", "DeploymentConstraints"):
        from . import api

        return getattr(api, name)
    if name in ("Scenario", "TrafficClass"):
        from . import scenario

        return getattr(scenario, name)
    if name == "Plan":
        from .plan import Plan

        return Plan
    if name == "price_sweep":
        from .sweep import price_sweep

        return price_sweep
    raise AttributeError(f"module 'quantplan.solver' has no attribute {name!r}")
