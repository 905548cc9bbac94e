"""What each hook may return: a plugin whose answer breaks these rules is dropped and named, like one that raises.

Terms must be `Term` records of a known quantity with finite, non-negative values (a step time or a
byte count below zero, or NaN, would make a plan with a negative TTFT); efficiencies must be above
zero; declaration hooks return lists of their record type; `quantplan_incompatibility` returns
strings; `quantplan_scheduling` a Scheduling or None; `quantplan_execution` an Execution or None.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from quantplan.solver import terms as _terms_module

_QUANTITIES = _terms_module.ADDITIVE | _terms_module.MULTIPLICATIVE | _terms_module.SINGLE


def _records(*type_names: str):
    def check(value) -> str | None:
        from quantplan.solver import specs

        types = tuple(getattr(specs, name) for name in type_names)
        if not isinstance(value, (list, tuple)):
            return f"returned {_kind(value)}; expected a list of {' or '.join(type_names)}"
        for item in value:
            if not isinstance(item, types):
                return f"returned a list holding {_kind(item)}; expected {' or '.join(type_names)}"
        return None
    return check


def _terms(value) -> str | None:
    from quantplan.solver import terms

    if not isinstance(value, (list, tuple)):
        return f"returned {_kind(value)}; expected a list of Term"
    for term in value:
        if not isinstance(term, terms.Term):
            return f"returned a list holding {_kind(term)}; expected Term"
        if term.quantity not in _QUANTITIES:
            return f"returned a term of unknown quantity {term.quantity!r}"
        number = term.value
        if type(number) is float and 0.0 < number < math.inf and term.quantity != terms.RESERVED_FREE_SHARE:
            continue  # the common case, checked fast
        if term.correction and term.quantity not in terms.MULTIPLICATIVE:  # may subtract: finite is enough
            try:
                number = abs(number)
            except TypeError:
                pass
        problem = _bad_number(number, strictly_positive=term.quantity in terms.MULTIPLICATIVE)
        if not problem and term.quantity == terms.RESERVED_FREE_SHARE and not _below_one(number):
            problem = f"{number} (a share of free memory kept back must be below 1: at 1 nothing fits)"
        if problem:
            return f"returned {term.quantity} = {problem} ({term.detail[:60]!r})"
    return None


def _below_one(value) -> bool:
    np = sys.modules.get("numpy")
    return bool(np.all(np.asarray(value) < 1)) if np is not None else value < 1


def _bad_number(value: Any, strictly_positive: bool) -> str | None:
    """None for a finite non-negative number (or array of them); else what is wrong with it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return f"{value} (not finite)"
        if value < 0 or (strictly_positive and value == 0):
            return f"{value:g} ({'not above zero' if strictly_positive else 'negative'})"
        return None
    np = sys.modules.get("numpy")  # no numpy imported, no array: declarations need not import it
    if np is not None and isinstance(value, (np.ndarray, np.floating, np.integer)) and np.issubdtype(
            np.asarray(value).dtype, np.number):
        array = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(array)):
            return "values that are not finite"
        if np.any(array < 0) or (strictly_positive and np.any(array == 0)):
            return "values below zero" if np.any(array < 0) else "values not above zero"
        return None
    return f"{_kind(value)} (not a number)"


def _strings(value) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        return f"returned {_kind(value)}; expected a list of strings"
    return None


def _optional(type_path: str):
    module, name = type_path.rsplit(".", 1)

    def check(value) -> str | None:
        import importlib

        expected = getattr(importlib.import_module(module), name)
        if value is not None and not isinstance(value, expected):
            return f"returned {_kind(value)}; expected {name} or None"
        return None
    return check


def _kind(value) -> str:
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


DECLARATIONS = ("quantplan_gpus", "quantplan_prices", "quantplan_methods", "quantplan_kv_cache_dtypes",
                "quantplan_frameworks", "quantplan_models", "quantplan_quality_data")

CHECKS = {
    "quantplan_gpus": _records("GPUSpec"),
    "quantplan_prices": _records("PriceSpec"),
    "quantplan_methods": _records("MethodSpec"),
    "quantplan_kv_cache_dtypes": _records("KVCacheSpec"),
    "quantplan_frameworks": _records("FrameworkSpec"),
    "quantplan_models": _records("ModelSpec"),
    "quantplan_quality_data": _records("MethodQualitySpec", "FamilyQualitySpec", "KVQualitySpec", "UseCaseSpec"),
    "quantplan_execution": _optional("quantplan.solver.candidates.Execution"),
    "quantplan_incompatibility": _strings,
    "quantplan_memory_terms": _terms,
    "quantplan_step_terms": _terms,
    "quantplan_scheduling": _optional("quantplan.solver.serving.Scheduling"),
    "quantplan_quality_terms": _terms,
    "quantplan_cost_terms": _terms,
}


def problem_with(hook_name: str, value) -> str | None:
    """None when `value` is an acceptable answer of `hook_name`; else one line saying what is wrong.

    None is always acceptable: nothing to declare, or not involved.
    """
    if value is None:
        return None
    check = CHECKS.get(hook_name)
    return check(value) if check else None

