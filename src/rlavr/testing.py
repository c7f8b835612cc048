"""Check an acquisition rule against rlavr's strategy contract: the checks rlavr runs on every built-in.

From Python or pytest::

    from rlavr.testing import check_strategy

    def test_my_rule():
        check_strategy(MyRule)              # raises StrategyContractError listing every failed check

    report = check_strategy("rules.py:MyRule", raise_on_failure=False)
    print(report)                           # every check, passed or failed, with its message

From the command line: ``rlavr check rules.py:MyRule`` (exit 0: passes; 1: fails, with the same messages; 2: the
path, class or name cannot be loaded).

Every form the rule declares is checked: the plain form, and the ``-mask`` form when the class sets
``supports_mask = True``. The checks (:data:`CHECKS`, one line each in :func:`describe_checks`):

* ``declaration``: a ``name``, known ``requires`` signals, a ``select`` method (what the registry accepts);
* ``select-valid``: ``select`` returns an :class:`~rlavr.types.Acquisition` with one route, weight and score
  per group, finite scores, weights in ``[0, 1]``, at most ``budget.remaining`` queries among groups whose
  label is not known, finite metrics;
* ``known-groups-free``: with nothing left to spend, only groups whose label is already owned are queried;
* ``deterministic``: two instances built with the same seed make the same decisions;
* ``no-global-rng``: construction, ``select``, ``update``, ``transform_advantages`` and the state round trip
  never draw from the global numpy / ``random`` / torch RNG;
* ``state-round-trip``: an instance restored from ``state_dict()``, written and read back as a checkpoint
  (``torch.load(weights_only=True)``, numpy objects encoded by :func:`rlavr.loop.weights_only_safe`), decides like
  the original, and ``load_state_dict`` does not mutate the state it is given;
* ``all-invalid-groups`` / ``group-size-one``: batches where no rollout has an answer, and ``G = 1``, work
  (``select`` and the full engine loop);
* ``engine-budget``: three rounds through :class:`~rlavr.engine.AcquisitionEngine` stay within the budget,
  dropped groups have no label, weight 0 and advantage 0, and no reservation is left behind;
* ``optional-hooks``: ``prompt_sampler`` and ``transform_advantages`` return well-formed values;
* ``rejects-bad-seed``: ``seed=-1`` raises a ``ValueError`` naming ``seed``;
* ``mask-never-pseudo`` (``-mask`` form only): the masked form never routes a group to PSEUDO (a group that is
  not queried is dropped), in ``select`` and through the engine. A rule that ignores ``self.mask`` fails it;
* ``no-undeclared-mask`` (rules without ``supports_mask``): building with ``mask=True`` is refused.

Batches are synthetic and randomised from seeded :class:`numpy.random.Generator` s (the same batches every
run); they carry every signal a strategy may declare (answers, per-token log-probabilities, prompt and
response hidden states, attention statistics, and reference labels when ``"labels"`` is required). Nothing
here imports pytest or hypothesis.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import pickle
import random
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlavr.advantages import grpo_advantages
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.oracles import DatasetOracle
from rlavr.strategies.base import SIGNALS, capabilities_of
from rlavr.types import Acquisition, PromptGroup, Rollout, RolloutBatch, Route

__all__ = [
    "CHECKS",
    "CheckOutcome",
    "ContractReport",
    "RuleLoadError",
    "StrategyContractError",
    "Subject",
    "applies",
    "check_strategy",
    "describe_checks",
    "load_rule",
    "make_batch",
    "run_check",
    "single_torch_thread",
    "subjects",
]

ANSWERS = ("1", "2", "3", "4")
H = 8  # hidden size of the synthetic batches


# ====================================================================================== results


class StrategyContractError(AssertionError):
    """A rule failed the strategy contract. ``str(err)`` lists every failed check with its message;
    ``err.report`` is the full :class:`ContractReport`. Subclasses ``AssertionError``, so pytest reports it as a
    test failure."""

    def __init__(self, report: ContractReport) -> None:
        super().__init__(report.failure_text())
        self.report = report


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check on one form (``"plain"`` or ``"mask"``) of a rule."""

    check: str
    form: str
    passed: bool
    message: str = ""

    @property
    def label(self) -> str:
        return f"{self.check} [{self.form}]"


@dataclass
class ContractReport:
    """Every check run on a rule, in order. ``ok`` is True when none failed."""

    strategy: str
    outcomes: list[CheckOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def passed(self) -> list[str]:
        """``"check [form]"`` of every check that passed."""
        return [o.label for o in self.outcomes if o.passed]

    @property
    def failed(self) -> list[CheckOutcome]:
        return [o for o in self.outcomes if not o.passed]

    def failure_text(self) -> str:
        lines = [f"strategy {self.strategy!r} failed {len(self.failed)} of {len(self.outcomes)} contract checks:"]
        for o in self.failed:
            msg = o.message.replace("\n", "\n      ")
            lines.append(f"  FAIL {o.label}: {msg}")
        return "\n".join(lines)

    def __str__(self) -> str:
        if self.ok:
            head = f"strategy {self.strategy!r} passes all {len(self.outcomes)} contract checks:"
        else:
            head = self.failure_text() + "\npassed:"
        return "\n".join([head, *(f"  ok   {label}" for label in self.passed)])


# ====================================================================================== what is checked


@dataclass(frozen=True)
class Subject:
    """One form of a rule under test: ``factory(seed=..., [mask=True], **kwargs)`` builds an instance."""

    id: str
    cls: type
    mask: bool
    factory: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self, seed: int) -> Any:
        kw: dict[str, Any] = {**self.kwargs, "seed": seed}
        if self.mask:
            kw["mask"] = True
        return self.factory(**kw)

    @property
    def form(self) -> str:
        return "mask" if self.mask else "plain"


class RuleLoadError(ValueError):
    """The rule could not be found or imported (a bad path, class or name): ``rlavr check`` exits with 2."""


def load_rule(spec: str) -> type:
    """The class named by ``"path/to/rule.py:Class"`` or by a registered name (``"-mask"`` forms resolve to their
    class). **A path executes that file's code**, like ``import``. The class is not validated here (that is the
    ``declaration`` check). Raises :class:`RuleLoadError` when the file, class or name cannot be found, or the
    file raises on import."""
    from rlavr.strategies import available, registry

    spec = spec.strip()
    if ".py:" in spec or spec.endswith(".py"):
        try:
            obj = registry._load_from_file(spec)
        except ValueError as exc:
            raise RuleLoadError(str(exc)) from None
        except Exception as exc:  # the user's file raised on import
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            raise RuleLoadError(f"strategy path {spec!r}: importing the file raised {tb}") from exc
        if not inspect.isclass(obj):
            raise RuleLoadError(f"strategy path {spec!r}: expected a class, got {type(obj).__name__}")
        return obj
    reg = available()
    key = spec.lower()
    if key in reg:
        return reg[key]
    if key.endswith("-mask") and key[: -len("-mask")] in reg:
        return reg[key[: -len("-mask")]]
    import difflib

    close = difflib.get_close_matches(key, list(reg), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RuleLoadError(f"strategy {spec!r}: not a registered name nor a 'path/to/rule.py:Class' path.{hint}")


def _resolve(rule: Any) -> tuple[type, str]:
    if isinstance(rule, str):
        cls = load_rule(rule)
        return cls, rule
    if inspect.isclass(rule):
        return rule, rule.__name__
    raise TypeError(f"check_strategy: expected a strategy class, a registered name or a 'path.py:Class' path, "
                    f"got {type(rule).__name__} (pass the class, not an instance)")


def subjects(rule: Any, factory: Callable[..., Any] | None = None, **kwargs: Any) -> list[Subject]:
    """The forms of ``rule`` to check: plain, and ``-mask`` when ``supports_mask`` is true. ``rule``: a class, a
    registered name or a ``path.py:Class`` path; ``factory`` (default: the class) builds instances from
    ``seed=``/``mask=`` and ``kwargs``."""
    cls, label = _resolve(rule)
    name = getattr(cls, "name", None)
    base = name if isinstance(name, str) and name.strip() and name != "base" else label
    make = factory if factory is not None else cls
    out = [Subject(base, cls, False, make, dict(kwargs))]
    if getattr(cls, "supports_mask", False) is True:
        out.append(Subject(f"{base}-mask", cls, True, make, dict(kwargs)))
    return out


# ====================================================================================== synthetic batches


def _attention_stats(rng: np.random.Generator) -> dict[str, Any]:
    """Generic per-rollout attention statistics (a scalar pivot density and a short distance trace)."""
    trace = rng.uniform(0.0, 64.0, size=int(rng.integers(1, 12)))
    return {"pivot_density": float(rng.uniform(0.0, 1.0)), "attention_distance": trace,
            "n_pivots": int(rng.integers(0, 5))}


def make_batch(seed: int, B: int = 8, G: int = 4, *, step: int = 0, all_invalid: bool = False,
               labels: bool = False, prefix: str = "p") -> RolloutBatch:
    """A batch with every signal, drawn from ``numpy.random.default_rng(seed)``: answers (some invalid, every
    third group unanimous, the last group all-invalid), token log-probs, hidden states, attention statistics;
    reference labels when ``labels``."""
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(B):
        if all_invalid or i == B - 1:
            answers: list[str | None] = [None] * G
        elif i % 3 == 0:
            answers = [ANSWERS[i % 4]] * G  # unanimous
        else:
            answers = [None if rng.random() < 0.15 else str(rng.choice(ANSWERS)) for _ in range(G)]
        rollouts = []
        for a in answers:
            T = int(rng.integers(1, 40))
            rollouts.append(Rollout(
                text=f"... so the answer is {a}" if a is not None else "no idea",
                answer=a,
                token_logprobs=-rng.exponential(0.7, size=T),
                truncated=bool(rng.random() < 0.1),
                hidden=rng.normal(size=H).astype(np.float32),
                attention=_attention_stats(rng),
            ))
        groups.append(PromptGroup(id=f"{prefix}{step}-{i}", prompt=f"question {i} at step {step}",
                                  rollouts=tuple(rollouts), prompt_hidden=rng.normal(size=H).astype(np.float32)))
    ref = [str(rng.choice(ANSWERS)) for _ in range(B)] if labels else None
    return RolloutBatch.from_groups(groups, reference_labels=ref, step=step)


def _batch(subject: Subject, seed: int, **kw: Any) -> RolloutBatch:
    return make_batch(seed, labels="labels" in set(getattr(subject.cls, "requires", ())), **kw)


def _label_table(batch: RolloutBatch) -> dict[str, str]:
    """Ground truth for a synthetic batch, deterministic in the prompt id."""
    return {pid: ANSWERS[sum(map(ord, pid)) % 4] for pid in batch.ids}


def _fresh(subject: Subject, seed: int = 0) -> Any:
    """Build the rule and, if it has a pool stage (``capabilities.pool_stage``), fit it first on a labelled pool,
    as the trainer does."""
    s = subject.build(seed)
    if capabilities_of(s).pool_stage and callable(getattr(s, "fit_pool", None)):
        pool = _batch(subject, 10_000 + seed, B=12, prefix="pool")
        fitted = s.fit_pool(pool, _label_table(pool))
        assert isinstance(fitted, Mapping), f"{subject.id}: fit_pool returned {type(fitted).__name__}, not a dict"
        # fitted values are numbers; +-inf is allowed (a threshold that admits everything), NaN is not
        bad = {k: v for k, v in fitted.items() if np.isnan(float(v))}
        assert not bad, f"{subject.id}: fit_pool returned NaN values {bad}"
    return s


def _gt_labels(batch: RolloutBatch, acq: Acquisition) -> dict[str, str]:
    table = _label_table(batch)
    return {batch.ids[i]: table[batch.ids[i]] for i in np.flatnonzero(acq.query)}


def _check_acquisition(acq: Any, batch: RolloutBatch, view: BudgetView, subject: Subject) -> Acquisition:
    who = subject.id
    assert isinstance(acq, Acquisition), f"{who}: select returned {type(acq).__name__}, not an Acquisition"
    B = batch.B
    shapes = (acq.routes.shape, acq.weights.shape, acq.scores.shape)
    assert shapes == ((B,), (B,), (B,)), f"{who}: routes/weights/scores have shapes {shapes}, expected ({B},) each"
    bad_routes = set(np.unique(acq.routes).tolist()) - {int(r) for r in Route}
    assert not bad_routes, f"{who}: unknown route values {sorted(bad_routes)}"
    assert np.all(np.isfinite(acq.scores)), f"{who}: non-finite scores {acq.scores}"
    assert np.all(np.isfinite(acq.weights)) and np.all((acq.weights >= 0) & (acq.weights <= 1)), (
        f"{who}: weights must be finite and in [0, 1], got {acq.weights}")
    new = acq.query & ~view.known
    assert int(new.sum()) <= view.remaining, (
        f"{who}: {int(new.sum())} new queries > budget.remaining {view.remaining} (known={view.known.tolist()})")
    for k, v in acq.metrics.items():
        assert isinstance(k, str) and np.isfinite(float(v)), f"{who}: metric {k}={v!r} is not a finite number"
    if subject.mask:
        _assert_no_pseudo(acq.routes, subject, "select")
    return acq


def _assert_no_pseudo(routes: np.ndarray, subject: Subject, where: str) -> None:
    pseudo = np.flatnonzero(np.asarray(routes) == Route.PSEUDO)
    assert pseudo.size == 0, (
        f"{subject.id}: the -mask form routed groups {pseudo.tolist()} to PSEUDO in {where}; with mask=True a group "
        "that is not queried must be dropped (honour self.mask, e.g. through route_by_score) or set "
        "supports_mask = False")


def _views(B: int, seed: int) -> list[BudgetView]:
    rng = np.random.default_rng(seed)
    some_known = rng.random(B) < 0.3
    return [
        BudgetView(remaining=0, known=np.zeros(B, bool)),
        BudgetView(remaining=2, known=np.zeros(B, bool)),
        BudgetView(remaining=B, known=np.zeros(B, bool)),
        BudgetView(remaining=1, known=some_known, spent=3, cap=4),
        BudgetView(remaining=0, known=np.ones(B, bool)),
    ]


def _acq_equal(a: Acquisition, b: Acquisition) -> bool:
    return (np.array_equal(a.routes, b.routes) and np.array_equal(a.weights, b.weights)
            and np.array_equal(a.scores, b.scores))


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Tiny classifiers run fastest single-threaded; restores torch's thread count afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ====================================================================================== the checks


def check_declaration(subject: Subject) -> None:
    """A ``name``, known ``requires`` signals and a ``select`` method: what the registry accepts."""
    from rlavr.strategies.registry import _validate_class

    try:
        _validate_class(subject.cls, f"class {subject.cls.__name__}")
    except ValueError as exc:
        raise AssertionError(str(exc)) from None
    unknown = set(getattr(subject.cls, "requires", ())) - SIGNALS
    assert not unknown, f"{subject.id}: requires unknown signals {sorted(unknown)}"


def check_select_valid(subject: Subject) -> None:
    """``select`` returns a well-formed Acquisition within ``budget.remaining`` for varied budget views."""
    s = _fresh(subject)
    for seed in (1, 2):
        batch = _batch(subject, seed, step=seed)
        for view in _views(batch.B, seed):
            _check_acquisition(s.select(batch, view), batch, view, subject)


def check_known_groups_free(subject: Subject) -> None:
    """With nothing left to spend, only groups whose label is already owned may be queried."""
    s = _fresh(subject)
    batch = _batch(subject, 3)
    known = np.zeros(batch.B, bool)
    known[::2] = True
    view = BudgetView(remaining=0, known=known, spent=10, cap=10)
    acq = _check_acquisition(s.select(batch, view), batch, view, subject)
    extra = np.flatnonzero(acq.query & ~known)
    assert extra.size == 0, f"{subject.id}: queried unknown groups {extra.tolist()} with budget.remaining=0"


def check_deterministic(subject: Subject) -> None:
    """Two instances built with the same seed make the same decisions, step after step."""
    a, b = _fresh(subject, seed=7), _fresh(subject, seed=7)
    for step in range(3):
        batch = _batch(subject, 100 + step, step=step)
        view = BudgetView(remaining=3, known=np.zeros(batch.B, bool))
        qa, qb = a.select(batch, view), b.select(batch, view)
        assert _acq_equal(qa, qb), f"{subject.id}: two instances with the same seed disagree at step {step}"
        a.update(batch, qa, _gt_labels(batch, qa))
        b.update(batch, qb, _gt_labels(batch, qb))


def _global_rng_state() -> tuple[Any, Any, Any]:
    import torch

    return np.random.get_state(), random.getstate(), torch.random.get_rng_state().clone()


def check_no_global_rng(subject: Subject) -> None:
    """Construction, select, update, hooks and state handling never touch the global numpy/random/torch RNG."""
    import torch

    caller = _global_rng_state()  # put back afterwards: checking a rule must not move the caller's RNGs either
    try:
        np.random.seed(1234)  # sets the global state this check watches
        random.seed(1234)
        torch.manual_seed(1234)
        _watch_global_rng(subject)
    finally:
        np.random.set_state(caller[0])
        random.setstate(caller[1])
        torch.random.set_rng_state(caller[2])


def _watch_global_rng(subject: Subject) -> None:
    import torch

    before = _global_rng_state()
    s = _fresh(subject, seed=3)
    caps = capabilities_of(s)
    for step in range(2):
        batch = _batch(subject, 200 + step, step=step)
        view = BudgetView(remaining=2, known=np.zeros(batch.B, bool))
        acq = s.select(batch, view)
        s.update(batch, acq, _gt_labels(batch, acq))
        if caps.transforms_advantages:
            adv = grpo_advantages(batch.correctness(batch.votes.majority_answer).astype(float))
            s.transform_advantages(batch, acq, adv)
    s.load_state_dict(s.state_dict())
    np_state, py_state, torch_state = _global_rng_state()
    hint = "use self.rng (or your own seeded torch.Generator; build modules under torch.random.fork_rng())"
    assert (np_state[0] == before[0][0] and np.array_equal(np_state[1], before[0][1])
            and np_state[2:] == before[0][2:]), f"{subject.id}: drew from the global numpy RNG; {hint}"
    assert py_state == before[1], f"{subject.id}: drew from Python's global `random`; {hint}"
    assert torch.equal(torch_state, before[2]), f"{subject.id}: drew from the global torch RNG; {hint}"


def _deep_equal(x: Any, y: Any) -> bool:
    import torch

    if isinstance(x, Mapping) and isinstance(y, Mapping):
        return x.keys() == y.keys() and all(_deep_equal(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(_deep_equal(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and np.array_equal(x, y)
    return bool(x == y)


def _through_checkpoint(subject: Subject, state: Any) -> Any:
    """``state`` written and read back as the TRL trainer and :class:`~rlavr.loop.AcquisitionLoop` checkpoints do:
    numpy objects encoded (:func:`~rlavr.loop.weights_only_safe`), ``torch.save``, ``torch.load(weights_only=True)``,
    numpy restored."""
    import io

    import torch

    from rlavr.loop import restore_numpy, weights_only_safe

    buf = io.BytesIO()
    torch.save(weights_only_safe(state), buf)
    buf.seek(0)
    try:
        return restore_numpy(torch.load(buf, weights_only=True))
    except Exception as exc:
        raise AssertionError(
            f"{subject.id}: state_dict() holds objects that torch.load(weights_only=True) refuses, and the trainer "
            f"reads its checkpoints that way ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); keep the state "
            "to tensors, numpy arrays, Python scalars, strings and containers of them") from None


def check_state_round_trip(subject: Subject) -> None:
    """A rule restored from a (pickled) state makes the same decisions as the original from then on."""
    a = _fresh(subject, seed=11)
    for step in range(2):
        batch = _batch(subject, 300 + step, step=step)
        acq = a.select(batch, BudgetView(remaining=3, known=np.zeros(batch.B, bool)))
        a.update(batch, acq, _gt_labels(batch, acq))
    try:
        state = pickle.loads(pickle.dumps(a.state_dict()))
    except Exception as exc:
        raise AssertionError(f"{subject.id}: state_dict() is not picklable ({type(exc).__name__}: {exc}); it goes "
                             "into the trainer checkpoint") from None
    state = _through_checkpoint(subject, state)
    snapshot = copy.deepcopy(state)
    b = _fresh(subject, seed=12)  # a different seed: everything that matters must come from the state
    b.load_state_dict(state)
    for step in range(2, 4):
        batch = _batch(subject, 300 + step, step=step)
        view = BudgetView(remaining=3, known=np.zeros(batch.B, bool))
        qa, qb = a.select(batch, view), b.select(batch, view)
        assert _acq_equal(qa, qb), (
            f"{subject.id}: an instance restored with load_state_dict(state_dict()) decided differently at step "
            f"{step}; save everything that influences later decisions (the RNG included) in state_dict")
        a.update(batch, qa, _gt_labels(batch, qa))
        b.update(batch, qb, _gt_labels(batch, qb))
    assert pickle.dumps(snapshot) == pickle.dumps(state) or _deep_equal(snapshot, state), (
        f"{subject.id}: load_state_dict mutated the state it was given")


def _run_engine(subject: Subject, steps: int, batch_fn: Callable[[int], RolloutBatch],
                budget: float = 0.25) -> AcquisitionEngine:
    """The full loop through the engine: decide (buys through the ledger), advantages, update."""
    s = _fresh(subject, seed=5)
    table: dict[str, str] = {}
    batches = [batch_fn(step) for step in range(steps)]
    for b in batches:
        table.update(_label_table(b))
    engine = AcquisitionEngine(s, DatasetOracle(table), budget=budget)
    seen = 0
    who = subject.id
    for step, batch in enumerate(batches):
        seen += batch.B
        res = engine.decide(RolloutBatch.from_groups(batch.groups, step=step), step=step)
        assert engine.spent <= budget * seen + 1e-9, f"{who}: spent {engine.spent} > cap at step {step}"
        assert len(set(res.bought)) == len(res.bought), f"{who}: a label was bought twice at step {step}"
        for i in range(batch.B):
            if res.routes[i] == Route.DROP:
                assert res.labels[i] is None and res.weights[i] == 0.0, (
                    f"{who}: dropped group {i} has label {res.labels[i]!r} / weight {res.weights[i]}")
            else:
                assert res.labels[i] is not None, f"{who}: kept group {i} has no label at step {step}"
        if subject.mask:
            _assert_no_pseudo(res.routes, subject, f"the engine loop (step {step})")
        adv = engine.advantages(res)
        assert adv.shape == (batch.B, batch.G) and np.all(np.isfinite(adv)), (
            f"{who}: advantages of shape {adv.shape} (expected {(batch.B, batch.G)}) or non-finite")
        assert np.all(adv[res.routes == Route.DROP] == 0.0), f"{who}: a dropped group has a non-zero advantage"
        engine.update(res)
    return engine


def check_all_invalid_groups(subject: Subject) -> None:
    """A batch in which no rollout has an answer: valid decision, and the engine trains on nothing it can't label."""
    s = _fresh(subject)
    batch = _batch(subject, 4, all_invalid=True)
    for view in _views(batch.B, 4):
        _check_acquisition(s.select(batch, view), batch, view, subject)
    _run_engine(subject, steps=2, batch_fn=lambda step: _batch(subject, 40 + step, step=step, all_invalid=True))


def check_group_size_one(subject: Subject) -> None:
    """``G = 1`` works: valid decisions, and the engine loop runs."""
    s = _fresh(subject)
    batch = _batch(subject, 5, G=1)
    for view in _views(batch.B, 5):
        _check_acquisition(s.select(batch, view), batch, view, subject)
    _run_engine(subject, steps=2, batch_fn=lambda step: _batch(subject, 50 + step, step=step, G=1))


def check_engine_budget(subject: Subject) -> None:
    """Three rounds through the engine: within the budget, drops unlabelled with weight and advantage 0."""
    engine = _run_engine(subject, steps=3, batch_fn=lambda step: _batch(subject, 60 + step, step=step))
    assert engine.ledger.n_charged == engine.ledger.n_bought, (
        f"{subject.id}: {engine.ledger.n_charged} labels charged but {engine.ledger.n_bought} bought "
        "(a reservation left behind)")


def check_optional_hooks(subject: Subject) -> None:
    """``prompt_sampler`` and ``transform_advantages`` return well-formed values."""
    s = _fresh(subject)
    caps = capabilities_of(s)
    pool = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(20)]
    picked = s.prompt_sampler(pool, 6) if caps.samples_prompts else None
    if picked is not None:
        picked = list(picked)
        assert len(picked) == 6, f"{subject.id}: prompt_sampler returned {len(picked)} indices for batch_size 6"
        assert all(isinstance(i, int | np.integer) and 0 <= i < len(pool) for i in picked), (
            f"{subject.id}: prompt_sampler returned indices outside [0, {len(pool)}): {picked}")
    batch = _batch(subject, 6)
    acq = s.select(batch, BudgetView(remaining=2, known=np.zeros(batch.B, bool)))
    adv = grpo_advantages(batch.correctness(batch.votes.majority_answer).astype(float))
    if caps.transforms_advantages:
        out = np.asarray(s.transform_advantages(batch, acq, adv.copy()))
        assert out.shape == adv.shape and np.all(np.isfinite(out)), (
            f"{subject.id}: transform_advantages returned shape {out.shape} (expected {adv.shape}) or non-finite "
            "values")


def check_rejects_bad_seed(subject: Subject) -> None:
    """``seed=-1`` raises a ValueError naming ``seed``."""
    try:
        subject.factory(**{**subject.kwargs, "seed": -1})
    except ValueError as exc:
        assert "seed" in str(exc), f"{subject.id}: seed=-1 raised ValueError without naming `seed`: {exc}"
        return
    except TypeError as exc:
        raise AssertionError(f"{subject.id}: the constructor does not accept `seed` ({exc})") from None
    raise AssertionError(f"{subject.id}: seed=-1 was accepted; raise ValueError naming `seed` "
                         "(Strategy.__init__ does when you call super().__init__(mask=mask, seed=seed))")


def check_mask_never_pseudo(subject: Subject) -> None:
    """The ``-mask`` form drops every group it does not query: no PSEUDO route in select or through the engine."""
    if not subject.mask:
        return
    s = _fresh(subject, seed=1)
    assert getattr(s, "mask", None) is True, f"{subject.id}: built with mask=True but self.mask is {s.mask!r}"
    for seed in (21, 22):
        batch = _batch(subject, seed, step=seed)
        for view in _views(batch.B, seed):
            _check_acquisition(s.select(batch, view), batch, view, subject)  # asserts no PSEUDO
    _run_engine(subject, steps=2, batch_fn=lambda step: _batch(subject, 70 + step, step=step))


def check_no_undeclared_mask(subject: Subject) -> None:
    """A rule without ``supports_mask = True`` refuses ``mask=True`` instead of silently ignoring it."""
    if subject.mask or getattr(subject.cls, "supports_mask", False) is True:
        return
    try:
        subject.factory(**{**subject.kwargs, "seed": 0, "mask": True})
    except (ValueError, TypeError):
        return
    raise AssertionError(f"{subject.id}: supports_mask is not True but mask=True was accepted; call "
                         "super().__init__(mask=mask, seed=seed) (it refuses), or honour self.mask and set "
                         "supports_mask = True")


def check_pseudo_declaration(subject: Subject) -> None:
    """``trains_on_pseudo_labels`` tells the truth: a rule declaring False never routes a group to PSEUDO itself,
    and its oracle-failure policy (``failed_query_route`` / ``failed_query_weight``) is a valid one (the engine's
    ``on_oracle_failure="auto"`` trusts both)."""
    s = _fresh(subject)
    caps = capabilities_of(s)
    route, weight = caps.failed_query_route, caps.failed_query_weight
    assert route in (Route.PSEUDO, Route.DROP), (
        f"{subject.id}: failed_query_route is {route!r}; it must be Route.PSEUDO or Route.DROP")
    assert 0.0 <= weight <= 1.0, f"{subject.id}: failed_query_weight {weight} is outside [0, 1]"
    if not _declares_no_pseudo(s):
        return
    assert route == Route.DROP, (
        f"{subject.id}: declares trains_on_pseudo_labels = False but failed_query_route is PSEUDO")
    for seed in (1, 2):
        batch = _batch(subject, seed, step=seed)
        for view in _views(batch.B, seed):
            acq = s.select(batch, view)
            assert not np.any(np.asarray(acq.routes) == Route.PSEUDO), (
                f"{subject.id}: declares trains_on_pseudo_labels = False but select routed groups "
                f"{np.flatnonzero(np.asarray(acq.routes) == Route.PSEUDO).tolist()} to PSEUDO")


def _declares_no_pseudo(s: Any) -> bool:
    """The rule DECLARES that it never trains on pseudo-labels (``trains_on_pseudo_labels`` false). A rule that
    declares nothing is not held to it here (the engine still treats it as not pseudo-labelling its failed
    queries, the safe side: ``capabilities.trains_on_pseudo_labels`` is false for it)."""
    return hasattr(s, "trains_on_pseudo_labels") and not capabilities_of(s).trains_on_pseudo_labels


class _NeverDelivers(DatasetOracle):
    """Every purchase fails (``None``); the free ``reference()`` still works (for label-peeking rules)."""

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[str | None]:
        return [None] * len(prompt_ids)


def check_failed_queries_follow_policy(subject: Subject) -> None:
    """With an oracle that never delivers, ``on_oracle_failure="auto"`` sends every failed query where the rule
    says, and a rule without pseudo-labels never trains on one."""
    s = _fresh(subject, seed=5)
    batches = [_batch(subject, 80 + step, step=step) for step in range(2)]
    table: dict[str, str] = {}
    for b in batches:
        table.update(_label_table(b))
    engine = AcquisitionEngine(s, _NeverDelivers(table), budget=0.5, max_retries=0)
    route, weight = engine.capabilities.failed_query_route, engine.capabilities.failed_query_weight
    for step, batch in enumerate(batches):
        res = engine.decide(RolloutBatch.from_groups(batch.groups, step=step), step=step)
        assert not (res.routes == Route.QUERY).any() and engine.ledger.n_charged == 0, (
            f"{subject.id}: a query without a label was kept or charged at step {step}")
        for pid, went in res.oracle_fallback.items():
            i = res.batch.ids.index(pid)
            if route == Route.DROP:
                assert went == Route.DROP and res.weights[i] == 0.0, (
                    f"{subject.id}: failed query {pid} went to {went!r} (weight {res.weights[i]}), the rule says DROP")
            elif went == Route.PSEUDO:
                assert abs(res.weights[i] - weight) < 1e-9, (
                    f"{subject.id}: failed query {pid} has weight {res.weights[i]}, the rule says {weight}")
        if _declares_no_pseudo(s):
            pseudo = np.flatnonzero(res.routes == Route.PSEUDO)
            assert pseudo.size == 0, (
                f"{subject.id}: declares trains_on_pseudo_labels = False but groups {pseudo.tolist()} trained on a "
                f"pseudo-label when the oracle failed (step {step})")
        engine.update(res)


CHECKS: dict[str, Callable[[Subject], None]] = {
    "declaration": check_declaration,
    "select-valid": check_select_valid,
    "known-groups-free": check_known_groups_free,
    "deterministic": check_deterministic,
    "no-global-rng": check_no_global_rng,
    "state-round-trip": check_state_round_trip,
    "all-invalid-groups": check_all_invalid_groups,
    "group-size-one": check_group_size_one,
    "engine-budget": check_engine_budget,
    "optional-hooks": check_optional_hooks,
    "rejects-bad-seed": check_rejects_bad_seed,
    "mask-never-pseudo": check_mask_never_pseudo,
    "no-undeclared-mask": check_no_undeclared_mask,
    "pseudo-declaration": check_pseudo_declaration,
    "failed-queries-follow-policy": check_failed_queries_follow_policy,
}
"""Every check, by name, in the order :func:`check_strategy` runs them. Each raises ``AssertionError`` with a
message naming the rule when the rule violates it."""

_MASK_ONLY = {"mask-never-pseudo"}
_PLAIN_ONLY = {"declaration", "no-undeclared-mask", "rejects-bad-seed"}


def applies(check: str, subject: Subject) -> bool:
    """Whether ``check`` is run on this form (some checks concern only the plain or only the ``-mask`` form)."""
    if check in _MASK_ONLY:
        return subject.mask
    if check == "no-undeclared-mask":
        return not subject.mask and getattr(subject.cls, "supports_mask", False) is not True
    if check in _PLAIN_ONLY:
        return not subject.mask
    return True


def describe_checks() -> dict[str, str]:
    """Check name -> the first line of its checking function's docstring."""
    out = {}
    for name, fn in CHECKS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        out[name] = doc[0] if doc else name
    return out


def run_check(check: str, subject: Subject) -> None:
    """Run one check on one form; raises ``AssertionError`` (or the rule's own exception) when it fails."""
    if check not in CHECKS:
        raise ValueError(f"check: unknown check {check!r}; known: {', '.join(CHECKS)}")
    with single_torch_thread():
        CHECKS[check](subject)


def _exception_message(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frame outside rlavr.testing (where the rule raised)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) != Path(__file__)]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"raised {type(exc).__name__}: {exc}{where}"


def check_strategy(rule: Any, *, raise_on_failure: bool = True, checks: list[str] | None = None,
                   factory: Callable[..., Any] | None = None, **kwargs: Any) -> ContractReport:
    """Run the strategy contract on every form of ``rule`` and report every check.

    Args:
        rule: the rule's class, a registered name (``"random"``) or ``"path/to/rule.py:Class"`` (executes it).
        raise_on_failure: raise :class:`StrategyContractError` (an ``AssertionError``) listing every failed check
            with its message; False returns the report either way.
        checks: names from :data:`CHECKS` to run (default: all).
        factory: builds instances from ``seed=`` (and ``mask=True``) plus ``kwargs``; default: the class.
        **kwargs: extra constructor arguments for every instance (e.g. a config).

    Returns:
        A :class:`ContractReport`: ``report.passed`` lists the checks passed, ``report.failed`` the failures.

    Raises:
        StrategyContractError: a check failed (with ``raise_on_failure``).
        RuleLoadError: ``rule`` is a path or name that cannot be loaded (a ``ValueError``).
        ValueError: an unknown name in ``checks``, or ``kwargs`` that do not fit the constructor.
    """
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"checks: unknown checks {unknown}; known: {', '.join(CHECKS)}")
    forms = subjects(rule, factory=factory, **kwargs)
    if kwargs:
        try:
            inspect.signature(forms[0].factory).bind(seed=0, **kwargs)
        except TypeError as exc:
            raise ValueError(f"check_strategy: constructor arguments {sorted(kwargs)} do not fit "
                             f"{getattr(forms[0].factory, '__name__', forms[0].factory)}: {exc}") from None
        except ValueError:  # no introspectable signature: the checks will tell
            pass
    report = ContractReport(forms[0].id)
    for subject in forms:
        for name in names:
            if not applies(name, subject):
                continue
            try:
                run_check(name, subject)
            except AssertionError as exc:
                report.outcomes.append(CheckOutcome(name, subject.form, False, str(exc) or _exception_message(exc)))
                if name == "declaration":  # not a usable strategy class: the other checks would only repeat it
                    return _finish(report, raise_on_failure)
            except Exception as exc:  # the rule's own error is a failed check, with its location
                report.outcomes.append(CheckOutcome(name, subject.form, False, f"{subject.id}: "
                                                    f"{_exception_message(exc)}"))
            else:
                report.outcomes.append(CheckOutcome(name, subject.form, True))
    return _finish(report, raise_on_failure)


def _finish(report: ContractReport, raise_on_failure: bool) -> ContractReport:
    if raise_on_failure and not report.ok:
        raise StrategyContractError(report)
    return report
