"""Strategy registry: built-ins (decorator), installed plugins (entry points) and files (``path.py:Class``).

The names live in a :class:`rlavr.registry.Registry` (the one registry type of rlavr, shared with answer spaces
and benchmark tasks); this module adds what is particular to strategies: class validation, ``-mask`` names,
``file.py:Class`` paths and building an instance with its keyword arguments.

Resolution order for :func:`get_strategy`:

1. a :class:`~rlavr.strategies.base.Strategy` instance is returned as is;
2. ``"path/to/file.py:ClassName"`` loads the class from that file. **This executes the file's code** with your
   privileges, like ``import``; only load files you trust;
3. a registered name (built-ins and the entry-point group ``rlavr.strategies``); a trailing ``-mask`` selects
   the masked form (``"random-mask"`` == ``get_strategy("random", mask=True)``) unless a strategy of that exact
   name is registered.

A plugin package registers strategies in its ``pyproject.toml``::

    [project.entry-points."rlavr.strategies"]
    my-rule = "my_package.rules:MyRule"
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast, overload

from rlavr.registry import Registry
from rlavr.strategies.base import SIGNALS, Strategy

logger = logging.getLogger(__name__)

__all__ = ["available", "get_strategy", "load_strategy_class", "register"]

ENTRY_POINT_GROUP = "rlavr.strategies"

S = TypeVar("S", bound=type[Strategy])


_PROTOCOL_METHODS = ("select", "update", "state_dict", "load_state_dict")


def _validate_class(cls: Any, origin: str) -> type[Strategy]:
    """Check that ``cls`` is a usable strategy class: a :class:`Strategy` subclass, or a class with every
    method of :class:`~rlavr.strategies.base.StrategyProtocol`, a ``name`` and known ``requires`` signals."""
    if not inspect.isclass(cls):
        raise ValueError(f"strategy {origin}: expected a class, got {type(cls).__name__}")
    if not callable(getattr(cls, "select", None)):
        raise ValueError(f"strategy {origin}: class {cls.__name__} has no select(batch, budget) method")
    if cls is Strategy or (issubclass(cls, Strategy) and getattr(cls, "select", None) is Strategy.select):
        raise ValueError(f"strategy {origin}: class {cls.__name__} does not implement select(batch, budget)")
    if not issubclass(cls, Strategy):
        missing = [m for m in _PROTOCOL_METHODS if not callable(getattr(cls, m, None))]
        if missing:
            raise ValueError(f"strategy {origin}: class {cls.__name__} is not a Strategy subclass and lacks "
                             f"{missing}; subclass rlavr.strategies.Strategy to get the defaults")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.strip() or name == "base":
        raise ValueError(f"strategy {origin}: class {cls.__name__} needs a class attribute `name` (a non-empty str)")
    requires: Any = getattr(cls, "requires", frozenset())
    if isinstance(requires, str) or not isinstance(requires, set | frozenset | tuple | list):
        raise ValueError(f"strategy {origin}: class {cls.__name__}.requires must be a set of signal names, "
                         f"got {requires!r}")
    unknown = set(requires) - SIGNALS
    if unknown:
        raise ValueError(f"strategy {origin}: requires unknown signals {sorted(unknown)}; allowed: {sorted(SIGNALS)}")
    return cast(type[Strategy], cls)


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", field="strategy", group=ENTRY_POINT_GROUP,
                                                validate=_validate_class, logger=logger)
"""Every registered strategy class by name (built-ins register on import; entry points are read on first use)."""




@overload
def register(cls: S, *, aliases: tuple[str, ...] = ()) -> S: ...


@overload
def register(cls: None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[S], S]: ...


def register(cls: S | None = None, *, aliases: tuple[str, ...] = ()) -> S | Callable[[S], S]:
    """Add a strategy class to the registry under ``cls.name`` (and ``aliases``), in this process, at run time.

    Public API (``from rlavr import register``): a rule defined in a notebook or a script becomes usable by name
    without packaging, ``register(MyRule)`` then ``get_strategy("my-rule")``, ``RLAVRConfig(strategy="my-rule")``
    or ``"my-rule-mask"`` when ``supports_mask`` is declared. Also usable as a decorator, ``@register`` or
    ``@register(aliases=("other-name",))``. Names are case-insensitive. Registering a different class under a
    taken name raises ValueError, except a redefinition of the same class (same module and qualified name, e.g.
    a notebook cell run again), which replaces it; re-registering the same class is a no-op.
    """

    def deco(c: S) -> S:
        return cast(S, STRATEGIES.register(c, aliases=aliases))

    return deco(cls) if cls is not None else deco


def load_strategy_class(spec: str) -> type[Strategy]:
    """Load ``"path/to/file.py:ClassName"``. Executes that file's code."""
    return _validate_class(_load_from_file(spec), f"path {spec!r}")


def _load_from_file(spec: str) -> Any:
    """The attribute ``ClassName`` of the module ``path/to/file.py`` (imported once, cached), not validated.
    Raises ValueError for a malformed spec, a missing file or a missing attribute; the file's own exceptions
    propagate."""
    path_str, sep, cls_name = spec.rpartition(":")
    if not sep or not path_str or not cls_name:
        raise ValueError(f"strategy path {spec!r}: expected 'path/to/file.py:ClassName'")
    path = Path(path_str).expanduser()
    if path.suffix != ".py":
        raise ValueError(f"strategy path {spec!r}: {path} is not a .py file")
    if not path.is_file():
        raise ValueError(f"strategy path {spec!r}: file {path} does not exist")
    resolved = path.resolve()
    # a file already imported as a module (e.g. a built-in strategy, or a rule of an installed package): use that
    # module, not a second copy whose @register would collide with the first
    module = next((m for m in list(sys.modules.values())
                   if isinstance(getattr(m, "__file__", None), str) and Path(str(m.__file__)).resolve() == resolved), None)
    mod_name = f"rlavr_user_strategy_{abs(hash(str(resolved)))}"
    if module is None:
        module = sys.modules.get(mod_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:  # pragma: no cover
            raise ValueError(f"strategy path {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception:
            del sys.modules[mod_name]
            raise
    if not hasattr(module, cls_name):
        found = [n for n, v in vars(module).items()
                 if inspect.isclass(v) and hasattr(v, "select") and v.__module__ == module.__name__]
        raise ValueError(f"strategy path {spec!r}: {path} defines no {cls_name!r} (strategy classes found: {found})")
    return getattr(module, cls_name)


def available() -> dict[str, type[Strategy]]:
    """All registered strategies, name -> class (built-ins and entry points; aliases included).

    Importing this module imports the package :mod:`rlavr.strategies` first, which registers every built-in."""
    return STRATEGIES.as_dict()


def get_strategy(spec: str | Strategy, default_seed: int | None = None, **kwargs: Any) -> Strategy:
    """Build a strategy from a registered name, a ``file.py:Class`` path, or return an instance unchanged.

    ``default_seed``: when given, a class whose constructor has a ``seed`` parameter is built with
    ``seed=default_seed`` unless ``kwargs`` already holds a ``seed`` (the TRL trainer passes ``args.seed``, so
    runs with different TRL seeds draw differently). Ignored for an instance, which keeps its own seed.

    Raises:
        ValueError: unknown name (the message lists the known ones), bad path, or bad keyword arguments.
    """
    if inspect.isclass(spec):
        cls = _validate_class(spec, f"class {spec.__name__}")
        return _instantiate(cls, repr(spec.__name__), kwargs, default_seed)
    if isinstance(spec, Strategy) or (not isinstance(spec, str) and callable(getattr(spec, "select", None))):
        if kwargs:
            raise ValueError(f"get_strategy: keyword arguments {sorted(kwargs)} given with a strategy instance")
        return spec  # type: ignore[return-value]
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"strategy: expected a name, a 'file.py:Class' path or a Strategy, got {spec!r}")
    spec = spec.strip()
    if ".py:" in spec:
        cls = load_strategy_class(spec)
    else:
        reg = available()
        key = spec.lower()
        if key in reg:
            cls = reg[key]
        elif key.endswith("-mask") and key[: -len("-mask")] in reg:
            cls = reg[key[: -len("-mask")]]
            if getattr(cls, "supports_mask", False) is not True:
                masked = sorted(n for n, c in reg.items() if getattr(c, "supports_mask", False) is True)
                raise ValueError(f"strategy {spec!r}: {cls.name!r} has no '-mask' form; strategies with one: "
                                 f"{', '.join(masked)} (a rule declares one with supports_mask = True)")
            if "mask" in kwargs and not kwargs["mask"]:
                raise ValueError(f"strategy {spec!r}: '-mask' name conflicts with mask=False")
            kwargs = {**kwargs, "mask": True}
        else:
            raise STRATEGIES.unknown(spec, hint=" (each also as '<name>-mask' where supported), or "
                                     "'path/to/file.py:ClassName'.")
    return _instantiate(cls, repr(spec), kwargs, default_seed)


def _instantiate(cls: type[Strategy], label: str, kwargs: dict[str, Any], default_seed: int | None = None
                 ) -> Strategy:
    """``cls(**kwargs)``; arguments that do not fit the constructor raise a ValueError showing its signature.
    ``default_seed`` fills a ``seed`` constructor parameter that ``kwargs`` leaves out (see :func:`get_strategy`)."""
    try:
        sig: inspect.Signature | None = inspect.signature(cls)
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        sig = None
    if default_seed is not None and "seed" not in kwargs and sig is not None and "seed" in sig.parameters:
        kwargs = {**kwargs, "seed": default_seed}
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            raise ValueError(f"strategy {label}: bad arguments {sorted(kwargs)}: {exc}. "
                             f"Signature: {cls.__name__}{sig}") from None
    return cls(**kwargs)
