"""The one plugin-manager factory: built-ins, entry points loaded one by one, user catalogs; failures recorded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pluggy
from quantplan.plugins import hookspecs
from quantplan.plugins.results import DECLARATIONS, problem_with
from quantplan.plugins.builtin import builtin_plugins
from quantplan.solver.errors import PluginError, QuantplanError

STRICT_ENV = "QUANTPLAN_STRICT_PLUGINS"


@dataclass(frozen=True)
class PluginFailure:
    name: str
    distribution: str
    version: str
    error: str

    def line(self) -> str:
        where = f"{self.distribution} {self.version}".strip()
        error = " ".join(self.error.split())  # one line, whatever the exception's message holds
        return f"plugin {self.name!r} ({where or 'unknown distribution'}) failed: {error}"


@dataclass
class PluginSet:
    """A plugin manager plus what failed to load or raised, and where each plugin came from."""

    manager: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)
    strict: bool = False
    trusted: set[str] = field(default_factory=set)  # built-ins: their answers are held to the rules by tests
    _involved: dict = field(default_factory=dict, repr=False)
    dropped: int = 0  # plugins dropped so far: answers kept from before a drop are not reused after it

    def names(self) -> list[str]:
        return sorted(name for name, plugin in self.manager.list_name_plugin() if plugin is not None)

    def fail(self, failure: PluginFailure) -> None:
        if self.strict:
            raise PluginError(failure.line())
        self.failures.append(failure)
        _REPORTED.setdefault(failure.line(), failure)

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[str, list]]:
        """Call a declaration hook plugin by plugin, so one broken plugin cannot sink the rest."""
        results = []
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            try:
                value = _call(impl, kwargs)
            except Exception as error:  # a third-party plugin's bug: report it, carry on
                self._drop(impl.plugin_name, f"{hook_name} raised {type(error).__name__}: {error}")
                continue
            problem = problem_with(hook_name, value)
            if problem:
                self._drop(impl.plugin_name, f"{hook_name} {problem}")
                continue
            results.append((impl.plugin_name, list(value or [])))
        return results

    def check_declarations(self) -> None:
        """Call every declaration hook once, dropping plugins that raise or answer with junk, so that
        nothing a dropped plugin declared is used (its devices without its terms)."""
        for hook_name in DECLARATIONS:
            self.collect(hook_name)

    def call(self, hook_name: str, **kwargs: Any):
        """Call a first-result hook as pluggy would (last registered first); a plugin that raises or
        answers with junk is dropped and the next one asked."""
        for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls()):
            try:
                value = _call(impl, kwargs)
            except Exception as error:
                self._drop(impl.plugin_name, f"{hook_name} raised {type(error).__name__}: {error}")
                return self.call(hook_name, **kwargs)
            problem = None if impl.plugin_name in self.trusted else problem_with(hook_name, value)
            if problem:
                self._drop(impl.plugin_name, f"{hook_name} {problem}")
                return self.call(hook_name, **kwargs)
            if value is not None:
                return value
        return None

    def call_for(self, hook_name: str, config, **kwargs: Any) -> list:
        """Call a per-candidate hook on the plugins involved in `config` only.

        A plugin that defines `owns(config)` is called only for configurations it owns; plugins
        without it are always called. The choice is cached per (model, device, method, framework, KV).
        Answers of built-in plugins are not checked again on every call (tests hold them to the rules of
        plugins/results.py); every other plugin's are.
        """
        impls = self._impls(hook_name, config)
        kwargs["config"] = config
        results = []
        for function, argnames, name, checked in impls:
            try:
                value = function(*[kwargs[argument] for argument in argnames])
            except Exception as error:  # a plugin's bug: drop that plugin, report it, start again
                problem = f"raised {type(error).__name__}: {error}"
            else:
                problem = problem_with(hook_name, value) if checked else None
                if not problem:
                    results.append(value)
                    continue
            self._drop(name, f"{hook_name} {problem}")
            kwargs.pop("config")
            return self.call_for(hook_name, config, **kwargs)
        return results

    def built_in_only(self, hook_name: str, config) -> bool:
        """Whether only built-in plugins answer `hook_name` for `config`: they take arrays of lengths (contexts,
        prompts) where a hook's documentation promises scalars, so the candidate space asks them for several
        traffic classes in one call; another plugin is asked one length at a time."""
        return not any(checked for _, _, _, checked in self._impls(hook_name, config))

    def _impls(self, hook_name: str, config) -> list[tuple]:
        """(function, argument names, plugin name, answers checked) of the plugins involved in `config`, cached
        per (model, device, method, framework, KV)."""
        key = (hook_name, config.model.id, config.gpu.id, config.method.id, config.framework.id, config.kv.id)
        impls = self._involved.get(key)
        if impls is None:
            impls = [(impl.function, impl.argnames, impl.plugin_name, impl.plugin_name not in self.trusted)
                     for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls())
                     if not hasattr(impl.plugin, "owns") or impl.plugin.owns(config)]
            self._involved[key] = impls
        return impls

    def _drop(self, name: str, error: str) -> None:
        self._involved.clear()
        self.dropped += 1
        self.trusted.discard(name)
        distribution, version = self.distributions.get(name, (self.origins.get(name, ""), ""))
        self.fail(PluginFailure(name, distribution, version, error))
        plugin = self.manager.get_plugin(name)
        if plugin is not None:
            self.manager.unregister(plugin)


def _call(impl, kwargs: dict):
    """Call one hook implementation with the arguments it declares (pluggy lets it take fewer)."""
    return impl.function(*(kwargs[name] for name in impl.argnames))


# Failures seen in this process, each once, for the command line to print on stderr (take_failures).
_REPORTED: dict[str, PluginFailure] = {}


def take_failures() -> list[PluginFailure]:
    """Plugin failures recorded since the last call, each once, in the order they happened."""
    found = list(_REPORTED.values())
    _REPORTED.clear()
    return found


def record_failures(failures: Iterable[PluginFailure]) -> None:
    """Add failures seen elsewhere (a sweep's worker processes) to those the command line names."""
    for failure in failures:
        _REPORTED.setdefault(failure.line(), failure)


def make_plugin_set(catalogs: Iterable[Path | str] = (), extra: Iterable[object] = (),
                    entry_points: bool = True, strict: bool | None = None) -> PluginSet:
    """Build the plugin set: hookspecs, built-ins, entry points (group 'quantplan'), user catalogs, extras."""
    if strict is None:
        strict = os.environ.get(STRICT_ENV, "").strip() not in ("", "0", "false", "no")
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = PluginSet(manager, strict=strict)
    for plugin in builtin_plugins():
        manager.register(plugin, name=plugin.name)
        plugins.origins[plugin.name] = "quantplan (built-in)"
        plugins.trusted.add(plugin.name)
    if entry_points:
        load_entry_points(plugins)
    from quantplan.plugins.builtin.user_catalog import UserCatalogPlugin

    for path in _distinct_paths(catalogs):
        name = f"catalog:{Path(path).name}"
        if manager.has_plugin(name):  # another folder's file of the same name
            name = f"catalog:{path}"
        plugin = UserCatalogPlugin(path, name)
        _register(plugins, plugin, name, "user catalog")
        if plugin.calibration is not None:  # [[calibration]] rows: a plugin of their own (calibration.py)
            _register(plugins, plugin.calibration, plugin.calibration.name, "user catalog")
    for plugin in extra:
        name = getattr(plugin, "name", None) or type(plugin).__name__
        _register(plugins, plugin, name, "registered in code")
    _drop_unknown_hooks(plugins)
    plugins.check_declarations()
    return plugins


def _distinct_paths(paths: Iterable[Path | str]) -> list[Path | str]:
    """Each catalog file once, however often it is named (a scenario's `catalogs` and `--catalog`)."""
    seen, result = set(), []
    for path in paths:
        key = Path(path).resolve()
        if key not in seen:
            seen.add(key)
            result.append(path)
    return result


def _drop_unknown_hooks(plugins: PluginSet) -> None:
    """pluggy's check_pending, plugin by plugin: a misspelled hook (`quantplan_gpu`) drops its plugin,
    named with the closest real hook, instead of failing every command."""
    import difflib

    known = [name for name in dir(hookspecs) if name.startswith(hookspecs.PROJECT + "_")]
    while True:
        try:
            plugins.manager.check_pending()
            return
        except pluggy.PluginValidationError as error:
            name = plugins.manager.get_name(error.plugin)
            hook = next((h for h in _hook_names(error.plugin) if h not in known), "?")
            close = difflib.get_close_matches(hook, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            plugins.manager.unregister(error.plugin)
            distribution, version = plugins.distributions.get(name, (plugins.origins.get(name, ""), ""))
            plugins.fail(PluginFailure(name, distribution, version, f"unknown hook {hook!r}{hint}"))


def _hook_names(plugin: object) -> list[str]:
    return sorted(name for name in dir(plugin) if name.startswith(hookspecs.PROJECT + "_"))


def _register(plugins: PluginSet, plugin: object, name: str, origin: str) -> None:
    if plugins.manager.has_plugin(name):
        raise QuantplanError(f"two plugins are named {name!r}")
    plugins.manager.register(plugin, name=name)
    plugins.origins[name] = origin


def load_entry_points(plugins: PluginSet) -> None:
    """Load each entry point of group 'quantplan' alone; a failure is recorded with its distribution."""
    for entry_point in sorted(metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
        distribution = getattr(entry_point.dist, "name", "") or ""
        version = getattr(entry_point.dist, "version", "") or ""
        try:
            plugin = entry_point.load()
            if isinstance(plugin, type):
                plugin = plugin()
            if plugins.manager.has_plugin(entry_point.name):
                raise QuantplanError(f"a plugin named {entry_point.name!r} is already registered")
            plugins.manager.register(plugin, name=entry_point.name)
            plugins.origins[entry_point.name] = f"{distribution} {version}".strip()
            plugins.distributions[entry_point.name] = (distribution, version)
        except Exception as error:  # third-party import errors of any kind
            plugins.fail(PluginFailure(entry_point.name, distribution, version,
                                       f"{type(error).__name__}: {error}"))
