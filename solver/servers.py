"""A scenario's API server in front of the engines (`api_server = "nim"`, `solve --api-server nim`).

Every request's TTFT carries the per-request overhead of the server clients talk to. By default that is
the engine's own (`request_overhead_ms` in catalogs/frameworks.toml); a scenario that names another
server is planned with that server's overhead (`server_overhead_ms`) on every engine that has one for
it. An engine with no overhead known for that server is left out, and the plan says which and how
many: a user who deploys behind NIM wants plans behind NIM, not ones on an engine's own server.
"""

from __future__ import annotations

from dataclasses import replace

from .catalog import Registry
from .errors import QuantplanError
from .registry import World
from .scenario import Scenario

_DERIVED: dict = {}  # the last world behind a server: sweeps plan with one world, whose caches then hold


def known_servers(world: World) -> dict[str, list[str]]:
    """Server name -> the frameworks with an overhead for it."""
    found: dict[str, list[str]] = {}
    for framework in world.frameworks:
        for server in framework.server_overhead_ms:
            found.setdefault(server, []).append(framework.id)
    return found


def behind_api_server(world: World, scenario: Scenario) -> tuple[World, Scenario, str | None]:
    """(world whose engines serve behind `scenario.api_server`, the scenario restricted to the engines
    that can, a note for the plan); unchanged with no server named. Raises for a server no framework
    knows, or when none of the scenario's frameworks knows it."""
    if not scenario.api_server:
        return world, scenario, None
    server = scenario.api_server.strip().lower()
    known = known_servers(world)
    if server not in known:
        raise QuantplanError(f"api_server {server!r}: no framework has a per-request overhead for it "
                             f"(catalogs/frameworks.toml server_overhead_ms; known: {', '.join(sorted(known)) or 'none'})")
    considered = [world.frameworks.get(name).id for name in scenario.frameworks] or world.frameworks.ids()
    able = [f for f in considered if f in known[server]]
    left_out = [f for f in considered if f not in known[server]]
    if not able:
        raise QuantplanError(f"api_server {server!r}: none of the frameworks considered ({', '.join(considered)}) "
                             f"has an overhead for it; it is known in front of {', '.join(known[server])}")
    derived = _behind(world, server)
    overheads = ", ".join(f"{f} {derived.frameworks.get(f).request_overhead_ms:g} ms" for f in able)
    note = (f"API server {server} in front of the engine: every request's TTFT carries its overhead "
            f"({overheads}; frameworks.toml server_overhead_ms) instead of the engine's own server's")
    if left_out:
        note += (f"; {len(left_out)} framework{'s' if len(left_out) > 1 else ''} left out, with no overhead known "
                 f"for {server} in front of {'them' if len(left_out) > 1 else 'it'}: {', '.join(left_out)}")
    return derived, scenario.model_copy(update={"frameworks": tuple(able), "api_server": server}), note


def _behind(world: World, server: str) -> World:
    """`world` with each framework that knows `server` at that server's per-request overhead."""
    if _DERIVED.get("world") is world and _DERIVED.get("server") == server:
        return _DERIVED["derived"]
    frameworks = [f.model_copy(update={"request_overhead_ms": f.server_overhead_ms[server]})
                  if server in f.server_overhead_ms else f for f in world.frameworks]
    derived = replace(world, frameworks=Registry(world.frameworks.kind, frameworks))
    _DERIVED.clear()
    _DERIVED.update(world=world, server=server, derived=derived)
    return derived
