"""The plugin contract: every hook a quantplan plugin may implement.

A plugin may also define `owns(config) -> bool`: quantplan then calls its per-candidate hooks
(incompatibility, memory, step, quality and cost terms) only for configurations it owns, which keeps
large catalogs fast. Plugins without `owns` are called for every configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from quantplan.solver.candidates import Config, Execution, QualityBook, Step
    from quantplan.solver.serving import Scheduling
    from quantplan.solver.specs import (
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
    from quantplan.solver.terms import Term

PROJECT = "quantplan"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def quantplan_gpus() -> list[GPUSpec]:
    """Declare devices (GPUs, Apple SoCs, CPU sockets) this plugin provides.

    Called once when the registry is built.
    :return: the devices; an empty list means none.
    """


@hookspec
def quantplan_prices() -> list[PriceSpec]:
    """Declare default on-demand prices ($ per device-hour) for devices.

    Called once when the registry is built; `--price DEV=USD` overrides them afterwards.
    :return: prices; an empty list means none. Several providers may price one device (its default
        is their median); one provider pricing a device twice is an error.
    """


@hookspec
def quantplan_methods() -> list[MethodSpec]:
    """Declare weight quantization methods.

    Called once when the registry is built.
    :return: the methods; an empty list means none.
    """


@hookspec
def quantplan_kv_cache_dtypes() -> list[KVCacheSpec]:
    """Declare KV-cache element formats.

    Called once when the registry is built.
    :return: the formats; an empty list means none.
    """


@hookspec
def quantplan_frameworks() -> list[FrameworkSpec]:
    """Declare serving frameworks.

    Called once when the registry is built.
    :return: the frameworks; an empty list means none.
    """


@hookspec
def quantplan_models() -> list[ModelSpec]:
    """Declare models (shapes and perplexity baseline).

    Called once when the registry is built.
    :return: the models; an empty list means none.
    """


@hookspec
def quantplan_quality_data() -> list[MethodQualitySpec | FamilyQualitySpec | KVQualitySpec | UseCaseSpec]:
    """Declare published quality points: per-method and per-KV-format degradation, family sensitivity, use cases.

    Called once when the registry is built.
    :return: quality records of any of the four kinds; an empty list means none.
    """


@hookspec(firstresult=True)
def quantplan_execution(method: MethodSpec, gpu: GPUSpec, framework: FrameworkSpec) -> Execution | None:
    """Say how `framework` would run `method` on `gpu`: compute precision and kernel, or why it cannot.

    Called once per (method, device, framework) during candidate generation; the first
    non-None answer wins, so only the plugin that owns `framework` should answer.
    :param method: the weight quantization method.
    :param gpu: the device.
    :param framework: the serving framework.
    :return: an Execution (with `reason` set when impossible), or None when this plugin does not own `framework`.
    """


@hookspec
def quantplan_incompatibility(config: Config) -> list[str]:
    """Give the reasons `config` cannot run, from this plugin's point of view.

    Called once per configuration (before batch sizes are expanded).
    :param config: method, device, framework, GPUs per replica and KV precision.
    :return: one short reason per problem; an empty list means no objection.
    """


@hookspec
def quantplan_memory_terms(config: Config, context_tokens: int) -> list[Term]:
    """Contribute memory terms (bytes per GPU) for `config` holding `config.batch` sequences.

    Called once per candidate.
    :param config: the candidate configuration, batch included.
    :param context_tokens: tokens each sequence keeps in the KV cache (prompt + output).
    :return: terms with memory quantities (see quantplan.solver.terms); empty when not involved.
    """


@hookspec
def quantplan_step_terms(config: Config, step: Step) -> list[Term]:
    """Contribute speed terms for one engine step (a decode step or a prefill pass).

    Called a few times per candidate (decode, prefill of one prompt, prefill of a batch).
    :param config: the candidate configuration.
    :param step: phase, sequences, new tokens, the context they attend to, and the passes the work
        is split into (prefill chunks); sequences and new_tokens may be numpy arrays (several batch
        sizes evaluated at once), so terms must broadcast.
    :return: terms with step quantities (bytes, FLOPs, bandwidth, peak, efficiencies, seconds) for the
        whole step, all passes counted (weights are read once per pass), phase set to step.phase;
        empty when not involved.
    """


@hookspec
def quantplan_scheduling(config: Config) -> Scheduling | None:
    """Say how the framework schedules work under load: policy, token budget, running sequences.

    Called once per candidate and traffic class, by the load models (solver/serving.py).
    :param config: the candidate configuration; the planned batch caps the running sequences later.
    :return: a Scheduling record (policy "mixed" or "prefill-first", token budget, default running
        sequences, chunked prefill, KV reserved for prompt + output); None when not this plugin's
        framework. With no answer, quantplan assumes chunked mixed batching at the catalog budget.
    """


@hookspec
def quantplan_quality_terms(config: Config, quality: QualityBook) -> list[Term]:
    """Contribute quality terms: relative perplexity increase, or the baseline perplexity.

    Called once per configuration.
    :param config: the candidate configuration.
    :param quality: the published quality points collected from all plugins.
    :return: terms with quantity ppl_relative_increase or ppl_baseline; empty when not involved.
    """


@hookspec
def quantplan_cost_terms(config: Config, prices: dict[str, PriceSpec]) -> list[Term]:
    """Contribute cost terms ($ per hour of one replica).

    Called once per configuration.
    :param config: the candidate configuration.
    :param prices: device id -> price after user overrides.
    :return: terms with quantity usd_per_hour; empty when not involved.
    """
