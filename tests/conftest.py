"""Shared fixtures: a world built from a fresh plugin manager, and the shipped measurements."""

from __future__ import annotations

import csv
from importlib import resources

import pytest

from quantplan.plugins.manager import make_plugin_set
from quantplan.solver.registry import build_world


@pytest.fixture
def world():
    """A fresh world per test: built-in plugins only, no entry points."""
    return build_world(make_plugin_set(entry_points=False))


@pytest.fixture(scope="session")
def measurements() -> dict[int, dict]:
    """Published measurements shipped in catalogs/measurements.csv, by row id."""
    with resources.files("quantplan.catalogs").joinpath("measurements.csv").open() as handle:
        return {int(row["id"]): row for row in csv.DictReader(handle)}
