"""Parsing option values given as text: the one JSON-object parser of the command line (``--task-kwargs``,
``--strategy-kwargs``, ``rlavr check --kwargs``) and of :class:`rlavr.trl.RLAVRConfig` (``strategy_kwargs``)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_json_object"]


def parse_json_object(value: Any, name: str) -> dict[str, Any]:
    """``value`` as a dict of keyword arguments: a dict (copied), a JSON object string, or ``None`` / an empty or
    blank string (``{}``).

    Raises:
        ValueError: naming the option ``name`` and the value: a string that is not JSON or not a JSON object, any
            other type, or a dict with a key that is not a string.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: expected a JSON object, got {text!r} ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a JSON object, got {text!r}")
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a dict (or a JSON object string), got {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{name}: keys must be strings, got {bad[0]!r}")
    return dict(value)
