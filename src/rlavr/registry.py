"""One registry type for everything rlavr resolves by name: strategies, answer spaces and benchmark tasks.

A :class:`Registry` maps case-insensitive names (and aliases) to objects, usually classes. Entries come from

* :meth:`Registry.register` (also a decorator), at import time for built-ins or at run time for a notebook;
* :meth:`Registry.register_lazy`: a ``"module:attribute"`` string imported on first use, so a registry never
  imports a heavy or optional module just to know its name;
* an installed package's entry points in the registry's group (``rlavr.strategies``, ``rlavr.answer_spaces``,
  ``rlavr.tasks``), loaded once, the first time a name is not found or the names are listed. A plugin whose
  import fails is skipped with a warning, and a name already taken (by a built-in) is ignored with a warning:
  a plugin never breaks the built-ins.

:meth:`Registry.get` raises a ``ValueError`` naming the field, the unknown name, the closest known names ("Did you
mean ...?") and every known name. See docs/writing-a-rule.md (strategies) and docs/api.md (answer spaces, tasks)
for the plugin side.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")

_logger = logging.getLogger(__name__)

_RAISE: Any = object()  # Registry.get without a default: an unknown name raises


def _key(name: str) -> str:
    return name.strip().lower()


class _Lazy:
    """A registry entry not imported yet: ``"module:attribute"``."""

    __slots__ = ("target",)

    def __init__(self, target: str) -> None:
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"register_lazy: expected 'module:attribute', got {target!r}")
        self.target = target

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


def _definition(obj: Any) -> tuple[Any, Any]:
    """``(module, qualified name)`` of a registered object (or of a lazy entry's target)."""
    if isinstance(obj, _Lazy):
        module, _, attr = obj.target.partition(":")
        return module, attr
    return getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)


class Registry(Mapping[str, T], Generic[T]):
    """Names to objects, with aliases, lazy entries and entry points (see the module docstring).

    A read-only :class:`~collections.abc.Mapping` over every name, aliases included (``name in registry``,
    ``registry[name]``, ``sorted(registry)``), entry points loaded first.

    Args:
        kind: what is registered, for messages (``"strategy"``, ``"answer space"``, ``"task"``).
        field: the option or argument that takes the name, the prefix of error messages (``"strategy"``).
        group: the entry-point group of installed plugins (``None``: none).
        validate: ``validate(obj, origin) -> obj`` checks an object before it is registered (``origin`` says where
            it comes from, for the message) and raises ``ValueError``; default: accept anything.
        logger: where plugin warnings go (default: this module's logger).

    Attributes:
        entries: the table, lower-cased name -> object (aliases included; lazy entries until first used).
        entry_points_loaded: whether the entry-point group was read (it is read once).
    """

    def __init__(self, kind: str, *, field: str, group: str | None = None,
                 validate: Callable[[Any, str], T] | None = None, logger: logging.Logger | None = None) -> None:
        self.kind = kind
        self.field = field
        self.group = group
        self.validate: Callable[[Any, str], T] = validate if validate is not None else (lambda obj, origin: obj)
        self.logger = logger or _logger
        self.entries: dict[str, Any] = {}
        self.entry_points_loaded = False
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------ registering
    def register(self, obj: Any = None, *, name: str | None = None, aliases: tuple[str, ...] = ()) -> Any:
        """Register ``obj`` under ``name`` (default: its ``name`` attribute) and ``aliases``; returns ``obj``.

        Without ``obj`` it returns a decorator. Re-registering the same object is a no-op; an object that redefines
        the registered one (same module and qualified name: a notebook cell run again) replaces it; another object
        under a taken name raises ``ValueError`` (``"... is already taken by ..."``).
        """

        def deco(o: Any) -> Any:
            o = self.validate(o, f"@register({getattr(o, '__name__', o)!r})")
            own = name if name is not None else getattr(o, "name", None)
            if not isinstance(own, str) or not own.strip():
                raise ValueError(f"register: {self.kind} {o!r} needs a name (a non-empty str)")
            self._add(o, own, aliases)
            return o

        return deco(obj) if obj is not None else deco

    def register_lazy(self, name: str, target: str, aliases: tuple[str, ...] = ()) -> None:
        """Register ``"module:attribute"`` under ``name`` and ``aliases``, imported (and validated) on first use."""
        self._add(_Lazy(target), name, aliases)

    def _add(self, obj: Any, name: str, aliases: tuple[str, ...]) -> None:
        names = (name, *aliases)
        for n in names:
            old = self.entries.get(_key(n))
            if old is not None and old is not obj and _definition(old) != _definition(obj):
                shown = old.target if isinstance(old, _Lazy) else getattr(old, "__qualname__", repr(old))
                raise ValueError(f"register: {self.kind} name {n!r} is already taken by {shown}")
        for n in names:
            self.entries[_key(n)] = obj
        for n in aliases:
            if _key(n) != _key(name):
                self._aliases[_key(n)] = _key(name)

    # ------------------------------------------------------------------ entry points
    def load_entry_points(self) -> None:
        """Read the entry-point group once (see the module docstring); later calls do nothing."""
        if self.entry_points_loaded or self.group is None:
            return
        self.entry_points_loaded = True
        for ep in entry_points(group=self.group):
            key = _key(ep.name)
            if key in self.entries:
                if _definition(self.entries[key])[0] != ep.value.partition(":")[0]:
                    shown = self.entries[key]
                    shown = shown.target if isinstance(shown, _Lazy) else getattr(shown, "__qualname__", shown)
                    self.logger.warning("rlavr: %s entry point %r (%s) ignored: the name is already taken by %s",
                                        self.kind, ep.name, ep.value, shown)
                continue
            try:
                obj = self.validate(ep.load(), f"entry point {ep.name!r} ({ep.value})")
            except Exception as exc:  # a broken plugin must not break the built-ins
                self.logger.warning("rlavr: could not load %s entry point %r (%s): %s", self.kind, ep.name, ep.value,
                                    exc)
                continue
            self.entries[key] = obj

    # ------------------------------------------------------------------ looking up
    def _resolve(self, key: str) -> T:
        obj = self.entries[key]
        if isinstance(obj, _Lazy):
            loaded = self.validate(obj.load(), f"{obj.target!r}")
            for k, v in self.entries.items():  # the name and its aliases share the loaded object
                if v is obj:
                    self.entries[k] = loaded
            return loaded
        return obj

    def find(self, name: str) -> T | None:
        """The object registered under ``name`` (case-insensitive; entry points read if needed), or ``None``."""
        key = _key(name)
        if key not in self.entries:
            self.load_entry_points()
        return self._resolve(key) if key in self.entries else None

    def get(self, name: str, default: Any = _RAISE, *, hint: str = "") -> Any:  # type: ignore[override]
        """The object registered under ``name``; with a ``default``, that for an unknown name (as ``dict.get``).

        Raises:
            ValueError: (no ``default``) ``"<field>: unknown <kind> 'x'. Did you mean 'y'? Known: ..."`` (``hint``
                appended).
        """
        found = self.find(name)
        if found is None:
            if default is not _RAISE:
                return default
            raise self.unknown(name, hint=hint)
        return found

    def unknown(self, name: str, *, hint: str = "") -> ValueError:
        """The error for an unknown ``name``: the closest known names and every known one (``hint`` appended)."""
        self.load_entry_points()
        known = sorted(self.entries)
        close = difflib.get_close_matches(_key(name), known, n=3)
        mean = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return ValueError(f"{self.field}: unknown {self.kind} {name!r}.{mean} Known: {', '.join(known)}{hint}")

    def names(self) -> list[str]:
        """The registered names without the aliases, sorted (entry points included)."""
        self.load_entry_points()
        aliases = self.aliases()
        return sorted(k for k in self.entries if k not in aliases)

    def aliases(self) -> dict[str, str]:
        """Alias -> the name it stands for (registered with ``aliases=``), for the aliases still registered."""
        return {a: n for a, n in sorted(self._aliases.items())
                if a in self.entries and n in self.entries and self.entries[a] is self.entries[n]}

    def as_dict(self) -> dict[str, T]:
        """Every name, aliases included, -> its object, sorted by name (entry points and lazy entries loaded)."""
        self.load_entry_points()
        return {k: self._resolve(k) for k in sorted(self.entries)}

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, name: str) -> T:
        found = self.find(name)
        if found is None:
            raise KeyError(name)
        return found

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if _key(name) not in self.entries:
            self.load_entry_points()
        return _key(name) in self.entries

    def __iter__(self) -> Iterator[str]:
        self.load_entry_points()
        return iter(sorted(self.entries))

    def __len__(self) -> int:
        self.load_entry_points()
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"
