"""The one plugin-manager factory: built-ins, entry points loaded one by one, user catalogs; failures recorded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pluggy
from quantplan.plugins import hookspecs
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
        return f"plugin {self.name!r} ({where or 'unknown distribution'}) failed: {self.error}"


@dataclass
class PluginSet:
    """A plugin manager plus what failed to load or raised, and where each plugin came from."""

    manager: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)
    strict: bool = False
    _involved: dict = field(default_factory=dict, repr=False)

    def names(self) -> list[str]:
        return sorted(name for name, plugin in self.manager.list_name_plugin() if plugin is not None)

    def fail(self, failure: PluginFailure) -> None:
        if self.strict:
            raise PluginError(failure.line())
        self.failures.append(failure)

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[str, list]]:
        """Call a declaration hook plugin by plugin, so one broken plugin cannot sink the rest."""
        results = []
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            try:
                value = impl.function(**kwargs)
            except Exception as error:  # a third-party plugin's bug: report it, carry on
                self._drop(impl.plugin_name, f"{hook_name} raised {type(error).__name__}: {error}")
                continue
            results.append((impl.plugin_name, list(value or [])))
        return results

    def call(self, hook_name: str, **kwargs: Any) -> list:
        """Call a per-candidate hook; if it raises, find and drop the culprit, then call again."""
        hook = getattr(self.manager.hook, hook_name)
        try:
            return hook(**kwargs)
        except Exception:
            for impl in hook.get_hookimpls():
                try:
                    impl.function(**kwargs)
                except Exception as error:
                    self._drop(impl.plugin_name, f"{hook_name} raised {type(error).__name__}: {error}")
                    return self.call(hook_name, **kwargs)
            raise

    def call_for(self, hook_name: str, config, **kwargs: Any) -> list:
        """Call a per-candidate hook on the plugins involved in `config` only.

        A plugin that defines `owns(config)` is called only for configurations it owns; plugins
        without it are always called. The choice is cached per (model, device, method, framework, KV).
        """
        key = (hook_name, config.model.id, config.gpu.id, config.method.id, config.framework.id, config.kv.id)
        impls = self._involved.get(key)
        if impls is None:
            impls = [impl for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls())
                     if not hasattr(impl.plugin, "owns") or impl.plugin.owns(config)]
            self._involved[key] = impls
        kwargs["config"] = config
        results = []
        for impl in impls:
            try:
                results.append(impl.function(**kwargs))
            except Exception as error:  # a plugin's bug: drop that plugin, report it, start again
                self._drop(impl.plugin_name, f"{hook_name} raised {type(error).__name__}: {error}")
                kwargs.pop("config")
                return self.call_for(hook_name, config, **kwargs)
        return results

    def _drop(self, name: str, error: str) -> None:
        self._involved.clear()
        distribution, version = self.distributions.get(name, (self.origins.get(name, ""), ""))
        self.fail(PluginFailure(name, distribution, version, error))
        plugin = self.manager.get_plugin(name)
        if plugin is not None:
            self.manager.unregister(plugin)


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
    if entry_points:
        load_entry_points(plugins)
    from quantplan.plugins.builtin.user_catalog import UserCatalogPlugin

    for path in catalogs:
        plugin = UserCatalogPlugin(path)
        _register(plugins, plugin, plugin.name, "user catalog")
        if plugin.calibration is not None:  # [[calibration]] rows: a plugin of their own (calibration.py)
            _register(plugins, plugin.calibration, plugin.calibration.name, "user catalog")
    for plugin in extra:
        name = getattr(plugin, "name", None) or type(plugin).__name__
        _register(plugins, plugin, name, "registered in code")
    manager.check_pending()
    return plugins


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
