r"""Shared maths: GRPO advantages, the Corrective Advantage Gap (CAG) and the class-wise CAG table.

Everything here is vectorised over the batch (leading dimension ``B``) and is the ONE place these formulas
live; strategies import them.

GRPO advantage of a group's rewards ``r`` (length ``G``)::

    A = (r - mean(r)) / (std(r) + eps)

Two std conventions exist and both are used in practice:

* ``"unbiased"`` (ddof = 1): verl's ``compute_grpo_outcome_advantage`` (eps = 1e-6) and TRL's GRPOTrainer
  (``torch.std``, eps = 1e-4). This is what trains the policy.
* ``"population"`` (ddof = 0, no eps, ``A = 0`` if ``std < 1e-8``): CARE's ``_compute_grpo_advantage``, used
  inside the CAG (docs/design.md#grpo-advantages).

CAG (CARE paper Eq. 4; docs/design.md#cag-and-oracle-cag): ``CAG = || A(r_GT) - A(r_pseudo) ||_2`` with
population-std advantages, the plain L2 norm over the G rollouts. Zero when the majority vote is right.

Class-wise CAG (CARE Algorithm 1; docs/design.md#class-wise-cag-and-the-admissible-classes): assume the
majority label is wrong, the majority cluster has ``x`` members and ``y`` other rollouts are correct (disjoint
from it)::

    pseudo = [1]*x + [0]*(G-x);  true = [0]*x + [1]*y + [0]*(G-x-y);  CAG(x, y) = ||A(true) - A(pseudo)||_2

admissible iff ``0 <= y <= x`` and ``x + y <= G``; inadmissible entries are 0. Closed form (p = x/G, q = y/G):
``sqrt(2G(1 + sqrt(pq/((1-p)(1-q)))))`` for ``0 < x < G, y > 0``; ``sqrt(G)`` for ``y = 0, 0 < x < G``; 0 if
``x`` in {0, G}.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any, Literal, TypeVar

import numpy as np

from rlavr.types import Route

__all__ = [
    "admissible_counts",
    "cag",
    "classwise_cag",
    "classwise_cag_table",
    "expected_cag",
    "grpo_advantages",
    "has_signal",
    "oracle_cag", "weigh_and_transform"]

StdMode = Literal["unbiased", "population", "none"]


def grpo_advantages(
    rewards: np.ndarray,
    std: StdMode = "unbiased",
    eps: float | None = None,
) -> np.ndarray:
    """GRPO advantages per group.

    Args:
        rewards: ``(B, G)`` rewards (or ``(G,)`` for one group). NaN entries are "unscorable": excluded from
            the group mean/std and given advantage 0 (TRL >= 1.10 semantics).
        std: ``"unbiased"`` (ddof 1, + eps; verl/TRL training), ``"population"`` (ddof 0, no eps, 0 when
            std < 1e-8; CARE's CAG), ``"none"`` (mean-centred only, Dr. GRPO).
        eps: added to the std for ``"unbiased"`` (default 1e-6, verl's value; TRL uses 1e-4).
    Returns:
        Advantages with the shape of ``rewards``.

    A group with a single scorable rollout (``G = 1``, or all but one reward NaN) gets advantage **0** in every
    mode: its mean is its own reward, so there is no group baseline and no relative (GRPO) signal. This is NOT
    verl's convention, which gives a group of size 1 mean 0 and std 1, i.e. ``A = r``. A group with no scorable
    rollout gets 0 as well.
    """
    r = np.asarray(rewards, dtype=np.float64)
    squeeze = r.ndim == 1
    if squeeze:
        r = r[None, :]
    if r.ndim != 2:
        raise ValueError(f"grpo_advantages: rewards must be (B, G) or (G,), got shape {r.shape}")
    if std not in ("unbiased", "population", "none"):
        raise ValueError(f"grpo_advantages: std must be 'unbiased', 'population' or 'none', got {std!r}")
    if eps is not None and not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"grpo_advantages: eps must be a finite number >= 0, got {eps!r}")
    if np.isinf(r).any():
        raise ValueError("grpo_advantages: rewards contain inf (NaN marks an unscorable rollout; inf is an error)")
    nan = np.isnan(r)
    n = (~nan).sum(axis=1, keepdims=True)
    safe_n = np.maximum(n, 1)
    rz = np.where(nan, 0.0, r)
    mean = rz.sum(axis=1, keepdims=True) / safe_n
    dev = np.where(nan, 0.0, r - mean)
    if std == "none":
        adv = dev
    elif std == "population":
        sd = np.sqrt((dev**2).sum(axis=1, keepdims=True) / safe_n)
        adv = np.divide(dev, sd, out=np.zeros_like(dev), where=sd >= 1e-8)
    else:
        e = 1e-6 if eps is None else eps
        sd = np.sqrt((dev**2).sum(axis=1, keepdims=True) / np.maximum(n - 1, 1))
        # a group with a single scorable rollout: the mean is that reward, so dev = 0 and A = 0 (the n - 1 = 0
        # divisor is clamped to 1 only to avoid 0/0). This is NOT verl's convention: verl gives a group of
        # size 1 mean 0 and std 1, i.e. A = r. rlavr gives A = 0 on purpose: a lone scorable reward has no
        # group baseline, so it carries no relative (GRPO) signal (docs/design.md#grpo-advantages).
        adv = dev / (sd + e)
    adv = np.where(nan, 0.0, adv)
    return adv[0] if squeeze else adv


def has_signal(correct: np.ndarray) -> np.ndarray:
    """Whether each group's 0/1 rewards give GRPO a non-zero advantage: some rollouts right and some wrong
    (``0 < c < G``); a group with every rollout right, or every one wrong, has constant rewards and advantage 0.

    Args:
        correct: ``(B, G)`` booleans, rollout ``g`` of group ``b`` right against the label.
    Returns:
        ``(B,)`` booleans.
    """
    c = np.asarray(correct, dtype=bool)
    return np.asarray(c.any(axis=-1) & ~c.all(axis=-1))


def cag(r_true: np.ndarray, r_pseudo: np.ndarray) -> np.ndarray:
    """Corrective Advantage Gap ``||A(r_true) - A(r_pseudo)||_2`` per group (population-std advantages).

    Args:
        r_true: ``(B, G)`` rewards against the ground truth.
        r_pseudo: ``(B, G)`` rewards against the pseudo-label.
    Returns:
        ``(B,)`` CAG (or a scalar for 1-D inputs).
    """
    rt, rp = np.asarray(r_true, dtype=np.float64), np.asarray(r_pseudo, dtype=np.float64)
    if rt.shape != rp.shape:
        raise ValueError(f"cag: r_true {rt.shape} and r_pseudo {rp.shape} must have the same shape")
    a_true = grpo_advantages(r_true, std="population")
    a_pseudo = grpo_advantages(r_pseudo, std="population")
    return np.linalg.norm(a_true - a_pseudo, ord=2, axis=-1)


def oracle_cag(correct: np.ndarray, in_majority: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """True CAG from rollout correctness (Oracle baseline, docs/design.md#cag-and-oracle-cag).

    ``r_GT[j] = correct[j]`` and ``r_pseudo[j] = in_majority[j]`` (invalid rollouts get reward 0 in both).
    """
    c = np.asarray(correct, dtype=np.float64)
    m = np.asarray(in_majority, dtype=np.float64)
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        c, m = c * v, m * v
    return cag(c, m)


def classwise_cag(G: int, x: int | np.ndarray, y: int | np.ndarray) -> np.ndarray:
    """``CAG(x, y)`` for group size ``G`` (0 where inadmissible), by the constructive definition.

    ``x`` and ``y`` broadcast against each other and must be integers in ``[0, G]``.
    """
    table = classwise_cag_table(G)
    xs, ys = np.asarray(x), np.asarray(y)
    for name, v in (("x", xs), ("y", ys)):
        if v.size and not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"classwise_cag: {name} must be integer counts, got dtype {v.dtype}")
        if v.size and (v.min() < 0 or v.max() > G):
            raise ValueError(f"classwise_cag: {name} must lie in [0, G={G}], got range [{v.min()}, {v.max()}]")
    return table[xs, ys]


@lru_cache(maxsize=64)
def _table(G: int) -> np.ndarray:
    x = np.arange(G + 1)[:, None]
    y = np.arange(G + 1)[None, :]
    j = np.arange(G)[None, None, :]
    pseudo = (j < x[..., None]).astype(np.float64) * np.ones((1, G + 1, 1))
    true = ((j >= x[..., None]) & (j < (x + y)[..., None])).astype(np.float64)
    pseudo = np.broadcast_to(pseudo, true.shape)
    d = cag(true.reshape(-1, G), pseudo.reshape(-1, G)).reshape(G + 1, G + 1)
    admissible = (y <= x) & (x + y <= G)
    t = np.where(admissible, d, 0.0)
    t.setflags(write=False)
    return t


def classwise_cag_table(G: int) -> np.ndarray:
    """``(G+1, G+1)`` table ``T[x, y]`` of class-wise CAG (read-only).

    See docs/design.md#class-wise-cag-and-the-admissible-classes.
    """
    if not isinstance(G, int | np.integer) or G < 1:
        raise ValueError(f"classwise_cag_table: G must be a positive int, got {G!r}")
    return _table(int(G))


def admissible_counts(majority_size: np.ndarray, cluster_sizes: np.ndarray, majority: np.ndarray) -> np.ndarray:
    """``(B, G+1)`` bool mask of admissible correct-count classes K(prompt).

    Class 0 is always admissible; for each NON-majority cluster C, class |C| is admissible (at most one
    cluster holds the correct answer). Computed without any label
    (docs/design.md#class-wise-cag-and-the-admissible-classes).

    Args:
        majority_size: ``(B,)`` majority cluster size x.
        cluster_sizes: ``(B, G)`` size per cluster id.
        majority: ``(B,)`` majority cluster id (-1 if none).
    """
    sizes = np.asarray(cluster_sizes)
    if sizes.ndim != 2:
        raise ValueError(f"admissible_counts: cluster_sizes must be (B, G), got shape {sizes.shape}")
    B, G = sizes.shape
    for name, v in (("majority_size", majority_size), ("majority", majority)):
        if np.shape(v) != (B,):
            raise ValueError(f"admissible_counts: {name} must have shape ({B},), got {np.shape(v)}")
    mask = np.zeros((B, G + 1), dtype=bool)
    mask[:, 0] = True
    nonmaj = sizes.copy()
    has = np.asarray(majority) >= 0
    nonmaj[np.flatnonzero(has), np.asarray(majority)[has]] = 0
    rows = np.repeat(np.arange(B), G)
    vals = nonmaj.reshape(-1)
    keep = vals > 0
    mask[rows[keep], vals[keep]] = True
    # x >= |C| always holds for the majority; keep the validity rule explicit anyway
    mask &= np.arange(G + 1)[None, :] <= np.asarray(majority_size)[:, None]
    mask[:, 0] = True
    return mask


def class_costs(majority_size: np.ndarray, admissible: np.ndarray) -> np.ndarray:
    """``(B, G+1)`` cost vector ``cost[k] = CAG(G, x, k)`` on admissible classes, 0 elsewhere."""
    B, K = admissible.shape
    G = K - 1
    table = classwise_cag_table(G)
    return np.where(admissible, table[np.asarray(majority_size)[:, None], np.arange(K)[None, :]], 0.0)


def expected_cag(probs: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """``E_CAG = sum_k P[k] * cost[k]`` per group (CARE Stage II score)."""
    return (np.asarray(probs) * np.asarray(costs)).sum(axis=-1)


A = TypeVar("A")


def _torch_tensor_type() -> Any:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array (a torch tensor is detached and copied to the host)."""
    tensor = _torch_tensor_type()
    if tensor is not None and isinstance(x, tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def weigh_and_transform(advantages: A, weights: np.ndarray, routes: np.ndarray, group_size: int,
                        transform: Any = None, name: str = "strategy", start: int = 0) -> A:
    """THE advantage post-processing of rlavr: ``A_{g,j} <- w_g A_{g,j}``, then ``transform(A)`` on ``(B, G)``.

    Args:
        advantages: per-rollout advantages as a numpy array or a torch tensor: the whole round shaped ``(B, G)``,
            or rows of the round (global rows ``start, start + 1, ...``) shaped ``(n,)`` or ``(n, T)`` (per token).
            Returned in the same type, shape, dtype (and device).
        weights: ``(B,)`` group weights; skipped (no multiplication) when every kept group has weight 1, so a
            ground-truth run is bitwise plain GRPO. The multiplication happens in the advantages' dtype (weights
            rounded to it first: the same bits as a float32 multiply in torch).
        routes: ``(B,)`` routes (which groups are kept).
        group_size: ``G``; row ``r`` belongs to group ``r // G``.
        transform: ``(B, G) float64 -> (B, G)``, the strategy's hook bound to its batch and acquisition, or
            ``None``. Needs the whole round of per-sequence advantages (``start = 0``).
        name: the strategy's name, for errors.
        start: the global index of the first row (a process' slice of the round).

    Raises:
        ValueError: rows outside the round, a transform on a slice or on per-token advantages, or a transform that
            changed the shape or returned non-finite values.
    """
    tensor = _torch_tensor_type()
    is_torch = tensor is not None and isinstance(advantages, tensor)
    arr = to_numpy(advantages)
    weights = np.asarray(weights, dtype=np.float64)
    routes = np.asarray(routes)
    B, G = int(weights.shape[0]), int(group_size)
    grid = arr.ndim == 2 and arr.shape == (B, G)
    n = B * G if grid else (arr.shape[0] if arr.ndim else 0)
    if arr.ndim == 0 or start < 0 or start + n > B * G or n == 0:
        raise ValueError(f"advantages: expected rows of a round of B * G = {B} * {G} rows, got shape {arr.shape} "
                         f"from row {start}")
    out = arr
    if not np.all(weights[routes != Route.DROP] == 1.0):
        dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
        w = weights.astype(dtype)[(start + np.arange(n)) // G]  # one weight per row, in the advantages' dtype
        out = (out.reshape(n, -1).astype(dtype, copy=False) * w[:, None]).reshape(arr.shape)
    if transform is not None:
        if not (grid or (arr.shape == (B * G,) and start == 0)):
            raise ValueError(f"strategy {name!r}.transform_advantages needs the whole round's per-sequence "
                             f"advantages, got shape {arr.shape} from row {start}")
        new = transform(np.asarray(out, dtype=np.float64).reshape(B, G))
        if np.shape(new) != (B, G):
            raise ValueError(f"strategy {name!r}.transform_advantages changed the shape {(B, G)} -> "
                             f"{np.shape(new)}")
        new = np.asarray(new, dtype=np.float64)
        if not np.all(np.isfinite(new)):
            raise ValueError(f"strategy {name!r}.transform_advantages returned non-finite values")
        out = new.reshape(arr.shape).astype(arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64)
    if out is arr:
        return advantages
    if is_torch:
        torch = sys.modules["torch"]
        return torch.as_tensor(np.ascontiguousarray(out)).to(  # type: ignore[no-any-return]
            device=advantages.device, dtype=advantages.dtype)  # type: ignore[attr-defined]
    return out  # type: ignore[return-value]
