"""Strategy.capabilities / capabilities_of: one answer for every hook, for subclasses and protocol-only rules."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlavr.strategies.base import Capabilities, Strategy, capabilities_of
from rlavr.strategies.registry import get_strategy
from rlavr.types import Acquisition, Route


class Plain(Strategy):
    name = "plain-caps"

    def select(self, batch, budget):  # pragma: no cover - never called
        raise AssertionError


class Hooks(Plain):
    requires = frozenset({"answers", "logprobs"})

    def update(self, batch, acquisition, labels):
        pass

    def transform_advantages(self, batch, acquisition, advantages):
        return advantages

    def prompt_sampler(self, pool, batch_size):
        return None


class ProtocolOnly:
    """Satisfies StrategyProtocol without subclassing Strategy."""

    name = "proto-caps"
    requires = frozenset({"hidden_states"})

    def select(self, batch, budget) -> Acquisition:  # pragma: no cover
        raise AssertionError

    def update(self, batch, acquisition, labels) -> None:
        pass

    def transform_advantages(self, batch, acquisition, advantages: np.ndarray) -> np.ndarray:
        return advantages

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_defaults_are_not_hooks():
    caps = Plain().capabilities
    assert isinstance(caps, Capabilities)
    assert not (caps.learns or caps.transforms_advantages or caps.samples_prompts or caps.diagnoses
                or caps.pool_stage)
    assert caps.trains_on_pseudo_labels and caps.failed_query_route is Route.PSEUDO


def test_overrides_are_hooks_and_signals_are_read():
    caps = Hooks().capabilities
    assert caps.learns and caps.transforms_advantages and caps.samples_prompts and not caps.pool_stage
    assert caps.needs_logprobs and not caps.needs_hidden_states and not caps.peeks_at_labels


def test_protocol_only_rule_gets_the_hooks_it_defines():
    caps = capabilities_of(ProtocolOnly())
    assert caps.learns and caps.transforms_advantages and not caps.samples_prompts
    assert caps.needs_hidden_states
    # no trains_on_pseudo_labels declaration: never trained on pseudo-labels, failed queries dropped
    assert not caps.trains_on_pseudo_labels and caps.failed_query_route is Route.DROP


def test_registered_rules():
    assert get_strategy("care").capabilities.learns
    assert get_strategy("care").capabilities.needs_hidden_states
    assert not get_strategy("random-mask").capabilities.trains_on_pseudo_labels
    assert get_strategy("random-mask").capabilities.failed_query_route is Route.DROP
    assert get_strategy("uncertainty-consistency").capabilities.pool_stage
    assert not get_strategy("entropy").capabilities.pool_stage


def test_cached_but_follows_mask():
    s = get_strategy("random")
    assert s.capabilities is s.capabilities
    s.mask = True
    assert not s.capabilities.trains_on_pseudo_labels
