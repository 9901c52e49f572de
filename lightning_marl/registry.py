"""The registry of components: algorithms, environments, dataset importers and plugins.

A component registers itself with a decorator inside its package::

    from lightning_marl.registry import register

    @register("plugin", "my_plugin")
    class MyPlugin(Plugin): ...

External packages (and the built-in plugins) are found through the entry-point group
``lightning_marl.plugins``: each entry point names a module, importing it runs its
``@register`` decorators. This module is a leaf: it imports nothing else of the project.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass

from lightning_marl.errors import ConfigError, PluginError

KINDS = ("algorithm", "env", "importer", "plugin")
ENTRY_POINT_GROUP = "lightning_marl.plugins"
_BUILTIN_MODULES = (
    "lightning_marl.algorithms",
    "lightning_marl.envs",
    "lightning_marl.data.importers",
)


@dataclass(frozen=True)
class Entry:
    """One registered component: its kind, name, object and where it came from."""

    kind: str
    name: str
    obj: object
    module: str

    @property
    def description(self) -> str:
        doc = (inspect.getdoc(self.obj) or "").strip()
        paragraph = " ".join(doc.split("\n\n")[0].split())
        return paragraph if len(paragraph) <= 110 else paragraph[:107].rsplit(" ", 1)[0] + " ..."

    @property
    def package(self) -> str:
        return self.module.split(".")[0]


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_discovered = False
_entry_point_errors: list[str] = []


def register(kind: str, name: str):
    """Class or function decorator that registers ``obj`` under ``(kind, name)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds are {KINDS}")

    def decorator(obj):
        previous = _REGISTRY[kind].get(name)
        module = getattr(obj, "__module__", "?")
        if previous is not None and previous.obj is not obj and previous.module != module:
            raise PluginError(
                f"two components claim the {kind} name {name!r}: {previous.module} and {module}; "
                "rename one of them"
            )
        _REGISTRY[kind][name] = Entry(kind, name, obj, module)
        obj._registry_name = name
        return obj

    return decorator


def discover() -> list[str]:
    """Import the built-in packages and every entry point of ``lightning_marl.plugins``.

    Returns the errors met while loading entry points (a broken third-party plugin must not stop
    the tool; it is reported by ``python -m lightning_marl plugins``).
    """
    global _discovered
    if _discovered:
        return list(_entry_point_errors)
    _discovered = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # a third-party plugin's bug is reported, not fatal
            _entry_point_errors.append(f"{entry_point.name} ({entry_point.value}): {error!r}")
    return list(_entry_point_errors)


def entries(kind: str) -> list[Entry]:
    """All registered components of one kind, sorted by name."""
    discover()
    return sorted(_REGISTRY[kind].values(), key=lambda entry: entry.name)


def get(kind: str, name: str):
    """The object registered as ``(kind, name)``, or a ConfigError listing the valid names."""
    discover()
    try:
        return _REGISTRY[kind][name].obj
    except KeyError:
        valid = sorted(_REGISTRY[kind])
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"no {kind} named {name!r}.{hint} Registered {kind}s: {', '.join(valid) or 'none'}. "
            "Run `python -m lightning_marl plugins` to list everything installed."
        ) from None
