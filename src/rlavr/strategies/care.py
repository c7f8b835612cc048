r"""CARE: Correction-Aware Reliability Estimation (paper §5, Algorithms 1-2; ``docs/strategies/care.md``).

Tags: **[CODE]** = read in the authors' code (``Lumina04/CARE@17391c6``), **[PAPER]** = paper prose,
**[INFERRED]** = our reading where both are silent. ``docs/strategies/care.md`` has the full discussion.

One step, for a batch of ``B`` prompts with ``G`` rollouts each
---------------------------------------------------------------

Features (:mod:`rlavr.features`): prompt input :math:`u = [h_p, v, d] \in R^{H+1+G}` (last-prompt-token hidden
state, valid ratio, sorted cluster distribution), response inputs :math:`[h_{r,j}, \ell_j] \in R^{H+1}`, the
stage-2 mask :math:`m_j` (valid, non-majority), admissible count classes :math:`K` and class costs
:math:`c_k = \mathrm{CAG}(G, x, k)`. [CODE]

Stage I, reliability (:class:`Stage1Net`, eval mode, no grad)::

    P1 = softmax(f1(u, [h_r, l]))[:, 1]                    # P(majority vote is correct)           [CODE]

Stage II, count distribution (:class:`Stage2Net`)::

    P2 = softmax(mask_K(f2(u, h_r, m)))                    # over counts 0..G, -1e9 outside K      [CODE]
    E_CAG = sum_k P2[k] * c_k                              # expected class-wise CAG               [CODE]

Routing (Algorithm 2):

* Stage-I gate: ``kR = ceil(p2 * B)`` (0 during the warm-up, for ``use_pseudo=False`` and in the ``-mask``
  form); the reliable set ``R`` = the ``kR`` highest ``P1`` -> **pseudo**. A fixed fraction, not a threshold.
  [CODE] Groups without any valid answer cannot be pseudo-labelled (no majority) and are never put in R
  [INFERRED; the code would waste the slot, the engine would drop them].
* Stage II: the others, ranked by ``E_CAG`` -> **query** the top ``budget.remaining`` (stable sort, ties to the
  lower index) [CODE]; groups already labelled in the ledger (``budget.known``) are always queried, free.
  If the budget exceeds the non-reliable candidates, the leftover goes to R in increasing ``P1`` [CODE: R ranks
  last with score -1; we order them by reliability, INFERRED].
* the rest -> **drop** (the code zeroes their advantage; ``docs/strategies/care.md``, "Routing").

Pseudo weight for R (paper Eq. 7 lost in extraction; ``docs/strategies/care.md``, "The pseudo-label weight"),
``pseudo_weight``:

* ``"code"`` (default): ``w = clip(E_CAG, 0, 1)`` as the shipped trainer does. Every admissible cost is
  :math:`\ge \sqrt{G} \ge 1` when ``0 < x < G`` and all are 0 otherwise, and ``P2`` sums to 1 over ``K``, so this
  is exactly ``w = 1[0 < x < G]`` whatever Stage II outputs (which is how it is computed, so it is also
  defined for CARE-mse and w/o stage2). It is the default because it is what produced the paper's numbers.
* ``"paper"``: ``w = P1`` (the prose "down-weights by the Stage-I reliability score"; unverified).
* ``"one"``: ``w = 1``.

Online training (:meth:`CARE.update`, after the policy update, on the groups whose label was bought) [CODE]:
labels ``y1 = [vote correct]``, aux ``z_j = [rollout j correct]``, ``y2`` = correct non-majority count (0 when the
vote is correct). ``train_steps`` (3) times: Stage-I batch = current + ``min(16, |buffer|)`` uniform history;
Stage-II batch = current + 16 count-stratified history; class weights
:math:`w_c = n_c^{-0.5} / \mathrm{mean}_{present}(n^{-0.5})`, clipped to ``[0.25, 4]``, 0 for absent classes;

.. math::
    L_1 = \mathrm{CE}_w(f_1, y_1) + 1.5\,\mathrm{CE}(\mathrm{aux}, z), \qquad
    L_2 = \mathrm{CE}_w(\mathrm{mask}_{K \cup \{y_2\}}(f_2), y_2)

AdamW (lr 1e-4, wd 0), gradient norm clipped to 1.0. The current samples enter the FIFO buffer (2048) after the
steps. CARE-mse (``objective="mse"``, paper ablation) replaces Stage II's ``G+1`` logits by one output regressed
on the true CAG with a class-weighted MSE and ranks by ``clip(pred, 0, max_k c_k)`` [INFERRED: the paper names
the ablation only].

Reproducibility: networks are initialised from their own seeded CPU generator inside
``torch.random.fork_rng`` and replay sampling uses :attr:`Strategy.rng`: no global RNG is ever drawn from.
:meth:`CARE.state_dict` holds both networks, both optimisers, the replay buffer, the update counter, the last
losses and the RNG, as tensors and Python scalars (``torch.load(weights_only=True)`` safe): resume is exact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from rlavr.budget import BudgetView, ceil_share
from rlavr.features import (
    DEFAULT_LENGTH_NORM,
    LabelTargets,
    RolloutFeatures,
    label_targets,
    require_signals,
    rollout_features,
)
from rlavr.metrics import auroc, macro_recall
from rlavr.strategies.base import Strategy, top_k
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, Label, RolloutBatch, Route

__all__ = ["CARE", "CAREConfig", "CAREMse", "CAREScores", "Stage1Net", "Stage2Net", "class_balanced_weights",
           "resolve_device"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_SCORE_CHUNK_ROWS = 2048
"""Response rows per chunk when scoring on CPU (2048 x 512 float32 activations = 4 MiB; at least one group)."""


# ================================================================================================ config


class CAREConfig(BaseModel):
    """Every CARE hyper-parameter, with the authors' script defaults (``docs/strategies/care.md``, "Configuration").

    Routing: ``prob_gate`` (p2, Stage-I fraction kept as pseudo; paper Table 4 uses 0-0.25), ``warmup_steps``
    (Stage I ignored until the classifiers were trained this many times; code: 20), ``pseudo_weight``,
    ``use_pseudo`` (False = "w/o ps" ablation), ``use_stage2`` (False = "w/o stage2": rank by
    ``stage2_fallback``), ``objective`` ("classify" = CARE, "mse" = CARE-mse).
    Architecture: ``prompt_hidden_dim`` 128, ``prompt_mid_dim`` 256 (head hidden), ``resp_mlp_hidden`` 64,
    ``resp_mlp_out`` 512, ``activation`` relu.
    Training: ``aux_weight`` 1.5 (0 = "w/o aux"), AdamW ``lr`` 1e-4 / ``weight_decay`` 0 / ``betas``,
    ``train_steps`` 3 per RL step, ``grad_clip`` 1.0 (0 = off), ``buffer_size`` 2048 (FIFO), ``history_samples``
    16, ``stratified_replay`` (Stage-II history stratified by count label), ``class_balance`` (False = "w/o cb"),
    ``class_balance_power`` 0.5, ``class_weight_min`` 0.25, ``class_weight_max`` 4.0.
    Features: ``length_norm`` 4000. Runtime: ``device`` ("auto" = where this process already runs torch on a GPU,
    else the CPU: see :func:`resolve_device`; or "cpu", "cuda", "cuda:N"), ``mask_value`` -1e9.
    Metrics: ``overlap_ratios`` (top-CAG overlap is also reported at the step's query count).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob_gate: float = Field(default=0.25, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=20, ge=0)
    pseudo_weight: Literal["code", "paper", "one"] = "code"
    use_pseudo: bool = True
    use_stage2: bool = True
    stage2_fallback: Literal["random", "reliability", "uniform"] = "random"
    objective: Literal["classify", "mse"] = "classify"

    prompt_hidden_dim: int = Field(default=128, ge=1)
    prompt_mid_dim: int = Field(default=256, ge=1)
    resp_mlp_hidden: int = Field(default=64, ge=1)
    resp_mlp_out: int = Field(default=512, ge=1)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"

    aux_weight: float = Field(default=1.5, ge=0.0)
    lr: float = Field(default=1e-4, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    train_steps: int = Field(default=3, ge=1)
    grad_clip: float = Field(default=1.0, ge=0.0)
    buffer_size: int = Field(default=2048, ge=1)
    history_samples: int = Field(default=16, ge=0)
    stratified_replay: bool = True
    class_balance: bool = True
    class_balance_power: float = Field(default=0.5, ge=0.0)
    class_weight_min: float = Field(default=0.25, gt=0.0)
    class_weight_max: float = Field(default=4.0, gt=0.0)

    length_norm: float = Field(default=DEFAULT_LENGTH_NORM, gt=0.0)
    device: str = "auto"
    mask_value: float = Field(default=-1e9, lt=0.0)
    overlap_ratios: tuple[float, ...] = (0.05, 0.10)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas: each must lie in [0, 1), got {v}")
        return v

    @field_validator("overlap_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0.0 < r <= 1.0 for r in v):
            raise ValueError(f"overlap_ratios: each must lie in (0, 1], got {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v == "auto":
            return v
        try:
            dev = torch.device(v)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {v!r} requested but CUDA is not available; use device='cpu'")
        return v

    @model_validator(mode="after")
    def _check(self) -> CAREConfig:
        for name in ("prob_gate", "aux_weight", "lr", "weight_decay", "grad_clip", "class_balance_power",
                     "class_weight_min", "class_weight_max", "length_norm", "mask_value"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: must be finite, got {getattr(self, name)}")
        if self.class_weight_min > self.class_weight_max:
            raise ValueError(f"class_weight_min: {self.class_weight_min} exceeds class_weight_max "
                             f"{self.class_weight_max}")
        return self


# ================================================================================================ networks


def _mlp_head(d_in: int, d_mid: int, d_out: int, act: type[nn.Module]) -> nn.Sequential:
    # BN(d) -> Linear(d -> mid) -> act -> Linear(mid -> out)                                    [CODE]
    return nn.Sequential(nn.BatchNorm1d(d_in), nn.Linear(d_in, d_mid), act(), nn.Linear(d_mid, d_out))


class Stage1Net(nn.Module):
    """Stage-I reliability classifier (``PromptFeatRespMLPBinaryClassifier``; ``docs/strategies/care.md``, "Stage I").

    * prompt_proj: ``BN(H+1+G) -> Linear(H+1+G, 128) -> act`` on ``u = [h_p, v, d]``;
    * resp_proj: ``BN(H+1) -> Linear(H+1, 64) -> act -> Linear(64, 512) -> act`` on each ``[h_r,j, l_j]``;
    * pooling: UNMASKED mean over the ``G`` responses;
    * head: ``BN(640) -> Linear(640, 256) -> act -> Linear(256, 2)`` on ``[p, mean_j r_j]`` (class 1 = vote correct);
    * aux head (same shape) on every ``[p, r_j]``: is response ``j`` correct.
    """

    def __init__(self, H: int, G: int, cfg: CAREConfig) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        d_p = H + 1 + G
        self.prompt_proj = nn.Sequential(nn.BatchNorm1d(d_p), nn.Linear(d_p, cfg.prompt_hidden_dim), act())
        self.resp_proj = nn.Sequential(nn.BatchNorm1d(H + 1), nn.Linear(H + 1, cfg.resp_mlp_hidden), act(),
                                       nn.Linear(cfg.resp_mlp_hidden, cfg.resp_mlp_out), act())
        d = cfg.prompt_hidden_dim + cfg.resp_mlp_out
        self.head = _mlp_head(d, cfg.prompt_mid_dim, 2, act)
        self.aux_head = _mlp_head(d, cfg.prompt_mid_dim, 2, act)

    def forward(self, prompt_x: torch.Tensor, resp_x: torch.Tensor, with_aux: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``prompt_x (N, H+1+G)``, ``resp_x (N, G, H+1)`` -> main logits ``(N, 2)``, aux logits ``(N, G, 2)``."""
        N, G, _ = resp_x.shape
        p = self.prompt_proj(prompt_x)                                          # (N, 128)
        r = self.resp_proj(resp_x.reshape(N * G, -1)).reshape(N, G, -1)        # (N, G, 512)
        main = self.head(torch.cat([p, r.mean(dim=1)], dim=1))                 # (N, 2)
        if not with_aux:
            return main, None
        pr = torch.cat([p[:, None, :].expand(N, G, p.shape[1]), r], dim=2)     # (N, G, 640)
        aux = self.aux_head(pr.reshape(N * G, -1)).reshape(N, G, 2)
        return main, aux

    @torch.no_grad()
    def main_logits(self, prompt_x: torch.Tensor, resp_h: torch.Tensor, len_norm: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
        """Inference-only main logits ``(N, 2)``, equal to ``forward(prompt_x, [resp_h, len_norm])[0]`` in eval
        mode (bit for bit on CPU), with the response MLP run ``chunk`` groups at a time (``None`` = all at once)
        so that the ``(N*G, 512)`` activations stay in cache and are never allocated whole; activations in place.
        ``resp_h (N, G, H)`` and ``len_norm (N, G)`` are concatenated per chunk (no ``(N, G, H+1)`` copy).
        """
        N, G, _ = resp_h.shape
        if N * G < _MIN_GEMM_ROWS:  # tiny: the plain forward (BLAS takes another kernel for very few rows)
            return self.forward(prompt_x, torch.cat([resp_h, len_norm[:, :, None]], dim=2), with_aux=False)[0]
        pooled = []
        for a, e in _chunks(N, G, chunk if _wide(self.resp_proj) else None):
            x = torch.cat([resp_h[a:e], len_norm[a:e, :, None]], dim=2)
            pooled.append(_run_inplace(self.resp_proj, x.reshape((e - a) * G, -1)).reshape(e - a, G, -1).mean(dim=1))
        return self.head(torch.cat([self.prompt_proj(prompt_x), torch.cat(pooled, dim=0)], dim=1))


class Stage2Net(nn.Module):
    """Stage-II count classifier (``PromptFeatRespMLPBinaryStage2Classifier``; ``docs/strategies/care.md``,
    "Stage II"); no aux head.

    * prompt_proj: as Stage I;
    * resp_proj: ``BN(H) -> Linear(H, 64) -> act -> Linear(64, 512) -> act`` on ``m_j * h_r,j`` (no length),
      output masked again by ``m_j``;
    * pooling: masked mean ``sum_j m_j r_j / max(1, sum_j m_j)``;
    * head: ``BN(640) -> Linear(640, 256) -> act -> Linear(256, n_out)``; ``n_out = G+1`` count logits
      (CARE) or 1 (CARE-mse regression on CAG).
    """

    def __init__(self, H: int, G: int, cfg: CAREConfig, n_out: int) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        d_p = H + 1 + G
        self.prompt_proj = nn.Sequential(nn.BatchNorm1d(d_p), nn.Linear(d_p, cfg.prompt_hidden_dim), act())
        self.resp_proj = nn.Sequential(nn.BatchNorm1d(H), nn.Linear(H, cfg.resp_mlp_hidden), act(),
                                       nn.Linear(cfg.resp_mlp_hidden, cfg.resp_mlp_out), act())
        self.head = _mlp_head(cfg.prompt_hidden_dim + cfg.resp_mlp_out, cfg.prompt_mid_dim, n_out, act)

    def forward(self, prompt_x: torch.Tensor, resp_h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``prompt_x (N, H+1+G)``, ``resp_h (N, G, H)``, ``mask (N, G)`` -> ``(N, n_out)``."""
        N, G, H = resp_h.shape
        m = mask.to(resp_h.dtype)[:, :, None]                                  # (N, G, 1)
        p = self.prompt_proj(prompt_x)
        r = self.resp_proj((resp_h * m).reshape(N * G, H)).reshape(N, G, -1) * m
        pooled = r.sum(dim=1) / m.sum(dim=1).clamp_min(1.0)                   # masked mean
        return self.head(torch.cat([p, pooled], dim=1))

    @torch.no_grad()
    def eval_logits(self, prompt_x: torch.Tensor, resp_h: torch.Tensor, mask: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
        """Inference-only output ``(N, n_out)``, equal to :meth:`forward` in eval mode (bit for bit on CPU).

        In eval mode BatchNorm uses its running statistics, so every response row is independent: only the rows
        with ``mask`` set go through ``resp_proj`` (:meth:`forward` multiplies the others by 0, so they add exact
        zeros to the masked sum); ``chunk`` groups at a time (``None`` = all at once), activations in place.
        A chunk with fewer than 16 masked rows runs all its rows instead (BLAS takes another kernel, with other
        rounding, for a handful of rows); with a layer of ``resp_proj`` narrower than 16 outputs everything runs
        in one call (see :func:`_wide`).
        """
        N, G, H = resp_h.shape
        if N * G < _MIN_GEMM_ROWS:
            return self.forward(prompt_x, resp_h, mask)
        m_all = mask.to(resp_h.dtype)[:, :, None]
        pooled = []
        for a, e in _chunks(N, G, chunk if _wide(self.resp_proj) else None):
            n, m = e - a, m_all[a:e]
            h = resp_h[a:e].reshape(n * G, H)
            rows = mask[a:e].reshape(-1).nonzero().squeeze(1)
            if rows.numel() >= _MIN_GEMM_ROWS and _wide(self.resp_proj):
                d_r = int(cast(nn.Linear, self.resp_proj[-2]).out_features)
                r = torch.zeros((n * G, d_r), dtype=h.dtype, device=h.device)
                r.index_copy_(0, rows, _run_inplace(self.resp_proj, h.index_select(0, rows)))
            else:
                r = _run_inplace(self.resp_proj, (h.reshape(n, G, H) * m).reshape(n * G, H))
            r = r.reshape(n, G, -1) * m
            pooled.append(r.sum(dim=1) / m.sum(dim=1).clamp_min(1.0))
        return self.head(torch.cat([self.prompt_proj(prompt_x), torch.cat(pooled, dim=0)], dim=1))


_MIN_GEMM_ROWS = 16
"""Fewest rows given to one matrix product on the chunked / masked inference paths (CPU BLAS switches to another
kernel, with other rounding, below 4 rows on the machines measured; 16 leaves a margin)."""


def _wide(seq: nn.Sequential) -> bool:
    """Every linear layer of ``seq`` has at least :data:`_MIN_GEMM_ROWS` outputs: only then are the chunked and
    row-subset paths used (CPU BLAS rounded row blocks of narrower products differently, e.g. at width 8)."""
    return all(m.out_features >= _MIN_GEMM_ROWS for m in seq if isinstance(m, nn.Linear))


def _chunks(N: int, G: int, chunk: int | None) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` group ranges of ``chunk`` groups covering ``0..N``; a last range with fewer than
    :data:`_MIN_GEMM_ROWS` rows is merged into the one before it."""
    step = N if chunk is None else max(1, int(chunk))
    bounds = [(a, min(N, a + step)) for a in range(0, N, step)]
    if len(bounds) > 1 and (bounds[-1][1] - bounds[-1][0]) * G < _MIN_GEMM_ROWS:
        bounds[-2:] = [(bounds[-2][0], N)]
    return bounds


def _run_inplace(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)`` for inference, with ReLU applied in place on the fresh output of the previous layer
    (same values as ``nn.ReLU``, one allocation less per activation)."""
    for i, mod in enumerate(seq):
        x = x.relu_() if isinstance(mod, nn.ReLU) and i > 0 else mod(x)
    return x


def class_balanced_weights(labels: torch.Tensor, n_classes: int, power: float, lo: float, hi: float
                           ) -> torch.Tensor:
    r"""Per-class loss weights from the labels of one training batch (``docs/strategies/care.md``, "Online training").

    :math:`w_c = n_c^{-power} / \mathrm{mean}_{c' : n_{c'} > 0} n_{c'}^{-power}`, clipped to ``[lo, hi]``, and 0 for
    classes absent from the batch.
    """
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float32)
    present = counts > 0
    raw = torch.where(present, counts.clamp_min(1.0).pow(-power), torch.zeros_like(counts))
    w = raw / raw[present].mean()
    return torch.where(present, w.clamp(lo, hi), torch.zeros_like(w))


# ================================================================================================ replay buffer


_BUFFER_FIELDS: dict[str, tuple[torch.dtype, str]] = {
    # name: (dtype, shape kind)  -- P = H+1+G, "GH" = (G, H)
    "prompt_x": (torch.float32, "P"),
    "resp_h": (torch.float32, "GH"),
    "len_norm": (torch.float32, "G"),
    "mask2": (torch.bool, "G"),
    "admissible": (torch.bool, "G+1"),
    "resp_correct": (torch.bool, "G"),
    "y1": (torch.int64, ""),
    "y2": (torch.int64, ""),
    "cag": (torch.float32, ""),
}


_STAGE1_KEYS = ("prompt_x", "resp_h", "len_norm", "resp_correct", "y1")
"""Buffer fields a Stage-I training batch reads."""
_STAGE2_KEYS = ("prompt_x", "resp_h", "mask2", "admissible", "y2", "cag")
"""Buffer fields a Stage-II training batch reads."""
_WEIGHT_CACHE_SIZE = 4096
"""Class-weight vectors :meth:`CARE._class_weights` keeps (cleared when full)."""
_HOST_FIELDS = ("y1", "y2")
"""Label fields the buffer also keeps on the host (class weights and stratified sampling read them there)."""


class _ReplayBuffer:
    """FIFO ring buffer of labelled samples, stored on the classifier device (storage grows by doubling up to
    ``capacity``).

    CARE keeps two ``deque(maxlen=2048)`` that always receive the same samples; one buffer read by both stages
    is equivalent and halves the memory. Logical order is oldest -> newest. The labels (``y1``, ``y2``) are
    mirrored in host arrays (:data:`_HOST_FIELDS`), so that count-stratified sampling (numpy RNG) and the class
    weights never read the device.
    """

    def __init__(self, capacity: int, H: int, G: int, device: torch.device | str = "cpu") -> None:
        self.capacity = int(capacity)
        self.H, self.G = int(H), int(G)
        self.device = torch.device(device)
        self.size = 0
        self.start = 0
        self.data: dict[str, torch.Tensor] = {k: self._empty(k, 0) for k in _BUFFER_FIELDS}
        # host copies of the label fields, same physical layout as ``data``
        self.host: dict[str, np.ndarray] = {k: np.zeros(0, dtype=np.int64) for k in _HOST_FIELDS}

    def _shape(self, kind: str) -> tuple[int, ...]:
        return {"P": (self.H + 1 + self.G,), "GH": (self.G, self.H), "G": (self.G,), "G+1": (self.G + 1,),
                "": ()}[kind]

    def _empty(self, key: str, n: int) -> torch.Tensor:
        dtype, kind = _BUFFER_FIELDS[key]
        return torch.zeros((n, *self._shape(kind)), dtype=dtype, device=self.device)

    def __len__(self) -> int:
        return self.size

    @property
    def alloc(self) -> int:
        """Rows allocated (``size <= alloc <= capacity``)."""
        return int(self.host["y2"].shape[0])

    def _physical_np(self, logical: np.ndarray) -> np.ndarray:
        return (self.start + np.asarray(logical, dtype=np.int64)) % max(self.alloc, 1)

    def _physical(self, logical: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._physical_np(logical)).to(self.device)

    def get(self, logical: np.ndarray, keys: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """The rows at logical positions ``logical`` of the fields ``keys`` (all when ``None``)."""
        idx = self._physical(logical)
        return {k: self.data[k].index_select(0, idx) for k in (self.data if keys is None else keys)}

    def get_host(self, logical: np.ndarray, key: str) -> np.ndarray:
        """The host copy of label field ``key`` (one of :data:`_HOST_FIELDS`) at logical positions ``logical``."""
        return self.host[key][self._physical_np(logical)]

    def labels2(self) -> np.ndarray:
        """Stage-II labels in logical order (from the host mirror; no device read)."""
        return self.get_host(np.arange(self.size), "y2")

    def append(self, samples: Mapping[str, torch.Tensor], host: Mapping[str, np.ndarray] | None = None) -> None:
        """Append ``samples`` (every :data:`_BUFFER_FIELDS` entry, leading dimension ``n``) as the newest rows;
        overflow evicts the oldest. ``host`` holds the :data:`_HOST_FIELDS` of ``samples`` as host arrays when
        the caller has them (saves a device read)."""
        n = int(samples["y1"].shape[0])
        if n == 0:
            return
        new_host = {k: (samples[k].cpu().numpy() if host is None else np.asarray(host[k])).astype(np.int64)
                    for k in _HOST_FIELDS}
        if n >= self.capacity:  # only the newest `capacity` survive
            samples = {k: v[-self.capacity:] for k, v in samples.items()}
            new_host = {k: v[-self.capacity:] for k, v in new_host.items()}
            n = self.capacity
        alloc = self.alloc
        if self.size + n > alloc and alloc < self.capacity:
            # grow (doubling, capped) and linearise so that start = 0
            new_alloc = min(self.capacity, max(2 * alloc, self.size + n, 16))
            order_np = self._physical_np(np.arange(self.size))
            order = torch.from_numpy(order_np).to(self.device)
            for k in self.data:
                fresh = self._empty(k, new_alloc)
                fresh[: self.size] = self.data[k].index_select(0, order)
                self.data[k] = fresh
            for k, h in self.host.items():
                fresh_host = np.zeros(new_alloc, dtype=np.int64)
                fresh_host[: self.size] = h[order_np]
                self.host[k] = fresh_host
            self.start = 0
            alloc = new_alloc
        # write at logical positions size .. size+n-1 (wrapping); overflow evicts the oldest
        pos = (self.start + self.size + np.arange(n)) % alloc
        pos_t = torch.from_numpy(pos).to(self.device)
        for k, v in samples.items():
            self.data[k].index_copy_(0, pos_t, v.to(device=self.device, dtype=self.data[k].dtype))
        for k, h in new_host.items():
            self.host[k][pos] = h
        overflow = max(0, self.size + n - alloc)
        self.start = (self.start + overflow) % alloc
        self.size = min(alloc, self.size + n)

    def sample_uniform(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``min(k, size)`` logical indices drawn uniformly without replacement."""
        k = min(int(k), self.size)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        return rng.choice(self.size, size=k, replace=False).astype(np.int64)

    def sample_stratified(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """Count-stratified history for Stage II (``docs/strategies/care.md``, "Online training"):
        ``base = max(1, k // #buckets)`` per label
        bucket in ascending label order, topped up from the shuffled leftovers (truncated at random if the
        buckets alone exceed ``k``)."""
        k = min(int(k), self.size)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        labels = self.labels2()
        buckets = np.unique(labels)
        base = max(1, k // buckets.size)
        chosen: list[np.ndarray] = []
        for c in buckets:  # at most G+1 buckets
            members = np.flatnonzero(labels == c)
            take = min(base, members.size)
            chosen.append(rng.choice(members, size=take, replace=False))
        picked = np.concatenate(chosen)
        if picked.size > k:
            picked = rng.choice(picked, size=k, replace=False)
        elif picked.size < k:
            left = np.setdiff1d(np.arange(self.size), picked)
            picked = np.concatenate([picked, rng.permutation(left)[: k - picked.size]])
        return picked.astype(np.int64)

    def state(self) -> dict[str, Any]:
        """Logical-order copy of the samples, as CPU tensors."""
        order = np.arange(self.size)
        return {"capacity": self.capacity, "H": self.H, "G": self.G,
                "data": {k: v.cpu().clone() for k, v in self.get(order).items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: torch.device | str = "cpu") -> _ReplayBuffer:
        buf = cls(int(state["capacity"]), int(state["H"]), int(state["G"]), device=device)
        data = state["data"]
        missing = set(_BUFFER_FIELDS) - set(data)
        if missing:
            raise ValueError(f"CARE.load_state_dict: replay buffer state lacks fields {sorted(missing)}")
        buf.append({k: torch.as_tensor(data[k]) for k in _BUFFER_FIELDS})
        return buf


# ================================================================================================ strategy


@dataclass(frozen=True)
class CAREScores:
    """Classifier outputs for one batch (numpy, batch order).

    Attributes:
        p1: ``(B,)`` Stage-I probability that the vote is correct.
        p2: ``(B, G+1)`` Stage-II count distribution (``None`` for CARE-mse / w/o stage2).
        pred_cag: ``(B,)`` CARE-mse predicted CAG, clipped to ``[0, max_k c_k]`` (``None`` otherwise).
        expected_cag: ``(B,)`` the Stage-II ranking score (E_CAG, predicted CAG, or the w/o-stage2 fallback).
        features: the label-free features.
    """

    p1: np.ndarray
    p2: np.ndarray | None
    pred_cag: np.ndarray | None
    expected_cag: np.ndarray
    features: RolloutFeatures


@register
class CARE(Strategy):
    """Correction-Aware Reliability Estimation (module docstring has the maths).

    Args:
        config: a :class:`CAREConfig` or a dict of its fields.
        mask: the ``-mask`` form: no pseudo-labels (same as ``use_pseudo=False``, the "w/o ps" ablation).
        seed: seeds the networks' initialisation and the replay sampling.
        **overrides: individual :class:`CAREConfig` fields (``get_strategy("care", prob_gate=0.1)``).
    """

    name: ClassVar[str] = "care"
    description: ClassVar[str] = ("Two-stage learned acquisition: keep the most reliable majority votes (Stage I), "
                                  "query the highest expected CAG (Stage II), drop the rest.")
    requires: ClassVar[frozenset[str]] = frozenset({"answers", "hidden_states"})
    supports_mask: ClassVar[bool] = True
    default_objective: ClassVar[Literal["classify", "mse"]] = "classify"

    def __init__(self, config: CAREConfig | Mapping[str, Any] | None = None, mask: bool = False, seed: int = 0,
                 **overrides: Any) -> None:
        super().__init__(mask=mask, seed=seed)
        if config is None:
            base: dict[str, Any] = {}
        elif isinstance(config, CAREConfig):
            base = {k: getattr(config, k) for k in config.model_fields_set}
        elif isinstance(config, Mapping):
            base = dict(config)
        else:
            raise ValueError(f"CARE.config: expected a CAREConfig, a dict or None, got {type(config).__name__}")
        fields = {**base, **overrides}
        fields.setdefault("objective", self.default_objective)
        if fields["objective"] != self.default_objective and type(self) is not CARE:
            raise ValueError(f"{type(self).__name__}.objective: {self.name!r} fixes objective="
                             f"{self.default_objective!r}, got {fields['objective']!r}")
        if mask and fields.get("use_pseudo", False):
            raise ValueError("CARE: mask=True ('care-mask') means no pseudo-labels, but use_pseudo=True was given")
        if mask:
            fields["use_pseudo"] = False
        self.config = CAREConfig(**fields)
        self.device = resolve_device(self.config.device)  # "auto" is resolved again when the networks are built
        self.H: int | None = None
        self.G: int | None = None
        self.stage1: Stage1Net | None = None
        self.stage2: Stage2Net | None = None
        self.opt1: torch.optim.AdamW | None = None
        self.opt2: torch.optim.AdamW | None = None
        self.buffer: _ReplayBuffer | None = None
        self.n_updates = 0
        self.last_losses: dict[str, float] = {}
        self._last_scores: CAREScores | None = None  # the last select's scores, for diagnostics()
        self._last_batch: RolloutBatch | None = None  # the batch they were computed for (update reuses features)
        self._weight_cache: dict[tuple[int, ...], torch.Tensor] = {}  # class weights per (n_classes, *counts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask={self.mask}, seed={self.seed}, config={self.config!r})"

    # ------------------------------------------------------------------ networks
    @property
    def trains_on_pseudo_labels(self) -> bool:
        """Whether the Stage-I pseudo route is live (``use_pseudo``; ``False`` for ``care-mask``)."""
        return bool(self.config.use_pseudo)

    @property
    def failed_query_route(self) -> Route:
        """DROP, in every form. A query CARE could not buy is a Stage-II pick: a group Stage I did NOT rank among
        the reliable votes and Stage II expects the largest correction (CAG) from, i.e. by construction a vote
        CARE trusts least. Its own route for such a group, had the budget not reached it, is DROP (only the
        Stage-I set ``R`` is pseudo-labelled), so pseudo-labelling it after an oracle failure would train on
        exactly the votes CARE exists to keep out of training. (A leftover-budget query taken from ``R`` is
        dropped too: simpler, and conservative.)"""
        return Route.DROP

    def _net_seed(self, stage: int) -> int:
        return int(np.random.SeedSequence([self.seed, stage]).generate_state(1, dtype=np.uint64)[0]) >> 1

    def _build(self, H: int, G: int) -> None:
        """Create both networks and optimisers for hidden size ``H`` and group size ``G``.

        Initialisation draws from the CPU default generator INSIDE ``fork_rng`` after seeding it with our own
        seed, so the caller's global torch RNG stream is untouched (CUDA generators are never touched: the
        modules are built on CPU, then moved).
        """
        cfg = self.config
        self.device = resolve_device(cfg.device)
        self._weight_cache.clear()  # its tensors live on the device
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(self._net_seed(1))
            stage1 = Stage1Net(H, G, cfg)
            stage2 = None
            if cfg.use_stage2:
                torch.random.default_generator.manual_seed(self._net_seed(2))
                stage2 = Stage2Net(H, G, cfg, n_out=G + 1 if cfg.objective == "classify" else 1)
        self.stage1 = stage1.to(self.device).eval()
        self.opt1 = self._adamw(self.stage1)
        if stage2 is not None:
            self.stage2 = stage2.to(self.device).eval()
            self.opt2 = self._adamw(self.stage2)
        self.buffer = _ReplayBuffer(cfg.buffer_size, H, G, device=self.device)
        self.H, self.G = int(H), int(G)

    def _adamw(self, net: nn.Module) -> torch.optim.AdamW:
        """AdamW over ``net``'s parameters with the configured settings, in its multi-tensor (``foreach``) form:
        one call per operation for all parameters instead of a Python loop over the parameters (torch's default
        on CPU). It gives the same parameters bit for bit as that loop (pinned by
        ``test_foreach_adamw_is_bit_identical_to_the_single_tensor_loop``); the ``fused`` form does not, so it is
        not used."""
        cfg = self.config
        return torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                 foreach=True)

    def _ensure(self, feats: RolloutFeatures) -> None:
        H, G = feats.H, feats.G
        assert H is not None
        if self.stage1 is None:
            self._build(H, G)
        elif (H, G) != (self.H, self.G):
            raise ValueError(f"CARE: the classifiers were built for hidden size H={self.H} and group size G={self.G}, "
                             f"but this batch has H={H}, G={G}; use one CARE instance per model / group size")

    # ------------------------------------------------------------------ scoring
    def _inputs(self, feats: RolloutFeatures) -> dict[str, torch.Tensor]:
        """Network inputs as tensors on the classifier device."""
        assert feats.response_hidden is not None
        dev = self.device
        return {
            "prompt_x": torch.from_numpy(np.ascontiguousarray(feats.prompt_input, dtype=np.float32)).to(dev),
            "resp_h": torch.from_numpy(np.ascontiguousarray(feats.response_hidden, dtype=np.float32)).to(dev),
            "len_norm": torch.from_numpy(np.ascontiguousarray(feats.length_norm, dtype=np.float32)).to(dev),
            "mask2": torch.from_numpy(np.ascontiguousarray(feats.stage2_mask)).to(dev),
            "admissible": torch.from_numpy(np.ascontiguousarray(feats.admissible)).to(dev),
        }

    @staticmethod
    def _resp1(x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # Stage-I response input [h_r,j, l_j]  (N, G, H+1)
        return torch.cat([x["resp_h"], x["len_norm"][:, :, None]], dim=2)

    def score(self, batch: RolloutBatch) -> CAREScores:
        """Run both classifiers (eval mode, inference mode) and compute the Stage-II ranking score.

        The probabilities come back to the host in one transfer (they decide the routes); everything before runs
        on the classifier device.
        """
        require_signals(batch, self.requires, f"strategy {self.display_name!r}")
        cfg = self.config
        feats = rollout_features(batch, hidden=True, length_norm=cfg.length_norm)
        self._ensure(feats)
        assert self.stage1 is not None
        x = self._inputs(feats)
        for net in (self.stage1, self.stage2):
            if net is not None and net.training:  # normally already in eval mode (update() leaves it there)
                net.eval()
        # chunked on CPU (activations stay in cache); one call on a GPU. Bit-identical to the modules' forward.
        chunk = None if self.device.type == "cuda" else max(1, _SCORE_CHUNK_ROWS // max(1, feats.G))
        with torch.inference_mode():
            main = self.stage1.main_logits(x["prompt_x"], x["resp_h"], x["len_norm"], chunk=chunk)
            parts = [torch.softmax(main.float(), dim=1)[:, 1:]]
            if self.stage2 is not None:
                out = self.stage2.eval_logits(x["prompt_x"], x["resp_h"], x["mask2"], chunk=chunk).float()
                if cfg.objective == "classify":
                    # P2 = softmax over counts with inadmissible classes at -1e9
                    out = torch.softmax(out.masked_fill(~x["admissible"], cfg.mask_value), dim=1)
                parts.append(out)
            host = torch.cat(parts, dim=1).cpu().numpy().astype(np.float64)  # the one device -> host read
        p1 = np.ascontiguousarray(host[:, 0])
        p2 = pred = None
        if self.stage2 is None:
            ecag = self._fallback_score(p1, feats)
        elif cfg.objective == "classify":
            p2 = np.ascontiguousarray(host[:, 1:])
            ecag = (p2 * feats.class_costs).sum(axis=1)  # E_CAG = sum_k P2[k] c_k
        else:
            # CARE-mse: predicted CAG, clipped to the admissible range [0, max_k c_k]
            pred = np.clip(host[:, 1], 0.0, feats.max_cost)
            ecag = pred
        return CAREScores(p1=p1, p2=p2, pred_cag=pred, expected_cag=ecag, features=feats)

    def _fallback_score(self, p1: np.ndarray, feats: RolloutFeatures) -> np.ndarray:
        """w/o stage2 ranking: "random" (paper App. C.4: random choice among the remaining prompts; uniforms from
        the strategy's own RNG), "reliability" (1 - P1) or "uniform" (E_CAG under uniform P2 on K)."""
        mode = self.config.stage2_fallback
        if mode == "random":
            return self.rng.random(feats.B)
        if mode == "reliability":
            return 1.0 - p1
        n_adm = feats.admissible.sum(axis=1)
        return feats.class_costs.sum(axis=1) / np.maximum(n_adm, 1)

    # ------------------------------------------------------------------ routing
    @property
    def in_warmup(self) -> bool:
        """Stage I is ignored (R = empty) until the classifiers were updated ``warmup_steps`` times.

        The code's ``global_step <= 20`` (1-based) with classifier training after every step is the same as
        ``n_updates < 20`` at selection time; counting updates keeps :meth:`select` free of side effects.
        """
        return self.n_updates < self.config.warmup_steps

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        cfg = self.config
        s = self.score(batch)
        B = batch.B
        known = np.asarray(budget.known, dtype=bool)
        if known.shape != (B,):
            raise ValueError(f"BudgetView.known: shape {known.shape} does not match the batch (B={B})")
        feats = s.features

        # Stage I: R = top ceil(p2 * B) by P1 among unlabelled groups that have a majority answer
        gate = 0.0 if (self.in_warmup or not cfg.use_pseudo) else cfg.prob_gate
        k_r = ceil_share(gate, B)
        reliable = np.zeros(B, dtype=bool)
        reliable[top_k(s.p1, k_r, ~known & (feats.majority_size > 0))] = True

        # Stage II: query the highest E_CAG among the rest, up to the budget; leftover budget goes to R
        # (least reliable first); everything else is dropped.
        query = known.copy()
        chosen = top_k(s.expected_cag, budget.remaining, ~known & ~reliable)
        query[chosen] = True
        left = budget.remaining - chosen.size
        if left > 0 and reliable.any():
            extra = top_k(-s.p1, left, reliable)
            query[extra] = True
            reliable[extra] = False
        routes = np.full(B, Route.DROP, dtype=np.int8)
        routes[reliable] = Route.PSEUDO
        routes[query] = Route.QUERY

        # pseudo weights (module docstring): code = clip(E_CAG, 0, 1) == 1[0 < x < G]; paper = P1; one = 1
        if cfg.pseudo_weight == "code":
            pw = ((feats.majority_size > 0) & (feats.majority_size < feats.G)).astype(np.float64)
        elif cfg.pseudo_weight == "paper":
            pw = np.clip(s.p1, 0.0, 1.0)
        else:
            pw = np.ones(B, dtype=np.float64)
        weights = np.where(routes == Route.PSEUDO, pw, np.where(routes == Route.QUERY, 1.0, 0.0))

        metrics = self._metrics(s)
        if batch.reference_labels is not None:  # called directly with ground truth (tests, notebooks)
            metrics.update(self._label_metrics(batch, s, routes))
        self._last_scores = s  # for diagnostics(), right after this select; never checkpointed
        self._last_batch = batch
        metrics["warmup"] = float(self.in_warmup)
        metrics["reliable_size"] = float(reliable.sum())
        return Acquisition(routes=routes, weights=weights, scores=np.nan_to_num(s.expected_cag), metrics=metrics)

    # ------------------------------------------------------------------ metrics
    def _metrics(self, s: CAREScores) -> dict[str, float]:
        """Label-free diagnostics of one select."""
        m: dict[str, float] = {"expected_cag_mean": float(s.expected_cag.mean()), "p1_mean": float(s.p1.mean()),
                               "updates": float(self.n_updates),
                               "buffer_size": float(len(self.buffer) if self.buffer is not None else 0)}
        m.update({f"loss_{k}": v for k, v in self.last_losses.items()})
        return m

    def diagnostics(self, batch: RolloutBatch, acquisition: Acquisition) -> dict[str, float]:
        """Classifier quality against the ground truth (``docs/strategies/care.md``, "Metrics"), for the select just
        made.

        The engine calls this AFTER ``select`` with the batch carrying reference labels (an oracle with a free
        ``reference()`` lookup), so the metrics can use the ground truth while the decision could not.
        """
        s = self._last_scores
        if s is None or batch.reference_labels is None or len(s.p1) != batch.B:
            return {}
        return self._label_metrics(batch, s, acquisition.routes)

    def _label_metrics(self, batch: RolloutBatch, s: CAREScores, routes: np.ndarray) -> dict[str, float]:
        """Stage-I precision/recall/accuracy/AUROC, reliable-set precision, Stage-II macro recall, top-CAG overlap
        (``docs/strategies/care.md``, "Metrics"), over the groups that have a reference label."""
        m: dict[str, float] = {}
        assert batch.reference_labels is not None
        # restricted to the groups that have a reference label (normally all); grading is shared with the engine
        t = label_targets(batch, batch.reference_labels, correct=batch.reference_correct)
        r = t.rows
        n = int(r.size)
        if n == 0:
            return m
        vote_ok, count, true_cag = t.vote_correct, t.count, t.true_cag
        p1, score, routes = s.p1[r], s.expected_cag[r], routes[r]
        # Stage I as a classifier: "predicted reliable" = top ceil(p2 * n) by P1 (the gate, warm-up or not)
        k_nominal = ceil_share(self.config.prob_gate, n)
        if k_nominal > 0:
            pred = np.zeros(n, dtype=bool)
            pred[top_k(p1, k_nominal)] = True
            tp = float((pred & vote_ok).sum())
            m["stage1_precision"] = tp / pred.sum()
            if vote_ok.any():
                m["stage1_recall"] = tp / vote_ok.sum()
            m["stage1_accuracy"] = float((pred == vote_ok).mean())
        if 0 < vote_ok.sum() < n:
            m["stage1_auroc"] = auroc(p1, vote_ok)
        pseudo = routes == Route.PSEUDO
        if pseudo.any():
            m["reliable_precision"] = float(vote_ok[pseudo].mean())
        # Stage II: argmax of the masked P2 vs the true count, on prompts outside R (macro recall)
        rest = ~pseudo
        if s.p2 is not None and rest.any():
            hat = s.p2[r].argmax(axis=1)
            m["stage2_macro_recall"] = macro_recall(hat[rest], count[rest])
            nz = rest & (count > 0)
            if nz.any():
                m["stage2_macro_recall_nonzero"] = macro_recall(hat[nz], count[nz])
        if s.pred_cag is not None and rest.any():
            m["stage2_cag_mae"] = float(np.abs(s.pred_cag[r][rest] - true_cag[rest]).mean())
        # |pred-top ∩ true-top (ties included)| / |pred-top| at several ratios and at the step's query count
        n_query = int((routes == Route.QUERY).sum())
        for name, k in [*((f"{q:g}", ceil_share(q, n)) for q in self.config.overlap_ratios), ("budget", n_query)]:
            if k > 0:
                m[f"top_overlap@{name}"] = _top_overlap(score, true_cag, k)
        m["true_cag_mean"] = float(true_cag.mean())
        if n_query:
            m["query_vote_wrong_ratio"] = float((~vote_ok[routes == Route.QUERY]).mean())
        return m

    # ------------------------------------------------------------------ online training
    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        """Train both classifiers on the groups of ``batch`` that have a label in ``labels`` (the ground truth
        bought or reused at this step), then push them into the replay buffer (``docs/strategies/care.md``,
        "Online training").

        ``train_steps`` (3) times: one AdamW step of Stage I on the current samples plus uniform history, then one
        of Stage II on the current samples plus count-stratified history, so ``2 * train_steps`` optimiser steps
        per update (``train_steps`` with ``use_stage2=False``). With fewer than 2 samples in a training batch
        (BatchNorm needs 2 in train mode) the gradient step is skipped; the samples still enter the buffer. The
        update counter (warm-up clock) always advances.

        Cost: the features of ``batch`` are reused from the :meth:`select` that scored this same batch object;
        the training batches are built on the classifier device; the losses are read back once at the end.
        """
        cfg = self.config
        t = label_targets(batch, labels)
        self.n_updates += 1
        if len(t) == 0:
            self.last_losses = {"train_samples": 0.0}
            return
        feats = self._features(batch).take(t.rows)
        self._ensure(feats)
        assert self.stage1 is not None and self.opt1 is not None and self.buffer is not None
        G = feats.G
        current = self._samples(feats, t)
        current_host = {"y1": t.vote_correct.astype(np.int64), "y2": t.count.astype(np.int64)}
        losses: dict[str, list[torch.Tensor]] = {"stage1": [], "stage1_aux": [], "stage2": []}
        n1 = n2 = 0
        nets = [net for net in (self.stage1, self.stage2) if net is not None]
        for net in nets:  # BatchNorm on batch statistics while training; once per update, not per step
            net.train()
        try:
            for _ in range(cfg.train_steps):
                # each repetition resamples the history; current samples first
                hist1 = self.buffer.sample_uniform(self.rng, cfg.history_samples)
                b1 = self._combine(current, hist1, _STAGE1_KEYS)
                n1 = int(b1["y1"].shape[0])
                if n1 >= 2:
                    l1, la = self._step_stage1(b1, self._class_weights(self._host_labels(current_host, hist1, "y1"), 2))
                    losses["stage1"].append(l1)
                    losses["stage1_aux"].append(la)
                if self.stage2 is not None:
                    hist = (self.buffer.sample_stratified if cfg.stratified_replay else self.buffer.sample_uniform)(
                        self.rng, cfg.history_samples)
                    b2 = self._combine(current, hist, _STAGE2_KEYS)
                    n2 = int(b2["y2"].shape[0])
                    if n2 >= 2:
                        w2 = self._class_weights(self._host_labels(current_host, hist, "y2"), G + 1)
                        losses["stage2"].append(self._step_stage2(b2, w2))
        finally:
            for net in nets:
                net.eval()
        self.buffer.append(current, host=current_host)
        # every loss of this update read back in one transfer (one device sync on a GPU)
        flat = [v for vs in losses.values() for v in vs]
        values = iter(torch.stack(flat).tolist() if flat else [])
        self.last_losses = {k: float(np.mean([next(values) for _ in v])) for k, v in losses.items() if v}
        self.last_losses.update({"train_samples": float(len(t)), "stage1_batch": float(n1),
                                 "stage2_batch": float(n2)})

    def _features(self, batch: RolloutBatch) -> RolloutFeatures:
        """The label-free features of ``batch``: the ones the last :meth:`select` built when it scored this same
        batch object (a :class:`RolloutBatch` is immutable), else built here (with the signal check)."""
        if self._last_scores is not None and self._last_batch is batch:
            return self._last_scores.features
        require_signals(batch, self.requires, f"strategy {self.display_name!r}")
        return rollout_features(batch, hidden=True, length_norm=self.config.length_norm)

    def _samples(self, feats: RolloutFeatures, t: LabelTargets) -> dict[str, torch.Tensor]:
        """The labelled samples of this update, every :data:`_BUFFER_FIELDS` entry, on the classifier device."""
        x = self._inputs(feats)
        dev = self.device
        return {
            "prompt_x": x["prompt_x"], "resp_h": x["resp_h"], "len_norm": x["len_norm"],
            "mask2": x["mask2"], "admissible": x["admissible"],
            "resp_correct": torch.from_numpy(t.resp_correct.copy()).to(dev),
            "y1": torch.from_numpy(t.vote_correct.astype(np.int64)).to(dev),
            "y2": torch.from_numpy(t.count.astype(np.int64)).to(dev),
            "cag": torch.from_numpy(t.true_cag.astype(np.float32)).to(dev),
        }

    def _combine(self, current: Mapping[str, torch.Tensor], hist: np.ndarray, keys: tuple[str, ...]
                 ) -> dict[str, torch.Tensor]:
        """One training batch: the fields ``keys`` of the current samples followed by the history rows ``hist``
        (logical buffer indices), on the classifier device."""
        assert self.buffer is not None
        if hist.size == 0:
            return {k: current[k] for k in keys}
        old = self.buffer.get(hist, keys)
        return {k: torch.cat([current[k], old[k]], dim=0) for k in keys}

    def _host_labels(self, current: Mapping[str, np.ndarray], hist: np.ndarray, key: str) -> np.ndarray:
        """Label field ``key`` of a training batch (current samples, then history ``hist``) from host copies."""
        assert self.buffer is not None
        if hist.size == 0:
            return current[key]
        return np.concatenate([current[key], self.buffer.get_host(hist, key)])

    def _class_weights(self, y: np.ndarray, n_classes: int) -> torch.Tensor | None:
        """:func:`class_balanced_weights` of the host labels ``y`` (computed on the CPU, the same numbers on every
        device, then copied to the classifier device: no device read), or ``None`` without class balance.

        The weights depend on the labels only through their class counts, and a run sees few distinct count
        vectors, so they are computed once per count vector (from labels with those counts: the same tensor)."""
        cfg = self.config
        if not cfg.class_balance:
            return None
        labels = np.ascontiguousarray(y, dtype=np.int64)
        key = (n_classes, *np.bincount(labels, minlength=n_classes).tolist())
        w = self._weight_cache.get(key)
        if w is None:
            w = class_balanced_weights(torch.from_numpy(labels), n_classes, cfg.class_balance_power,
                                       cfg.class_weight_min, cfg.class_weight_max).to(self.device)
            if len(self._weight_cache) >= _WEIGHT_CACHE_SIZE:
                self._weight_cache.clear()
            self._weight_cache[key] = w
        return w

    def _optimise(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``: backward, gradient norm clipped to ``grad_clip`` over the optimiser's
        parameters (the network's, in order), AdamW step."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], self.config.grad_clip)
        opt.step()

    def _step_stage1(self, b: Mapping[str, torch.Tensor], w: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        # L1 = CE_w(main, y1) + aux_weight * CE(aux over all N*G responses, correct)  (aux unweighted, unmasked)
        cfg = self.config
        assert self.stage1 is not None and self.opt1 is not None
        use_aux = cfg.aux_weight > 0
        main, aux = self.stage1(b["prompt_x"], self._resp1(b), with_aux=use_aux)
        loss_main = F.cross_entropy(main, b["y1"], weight=w)
        loss_aux = torch.zeros((), device=self.device)
        if aux is not None:
            loss_aux = F.cross_entropy(aux.reshape(-1, 2), b["resp_correct"].reshape(-1).long())
        self._optimise(self.opt1, loss_main + cfg.aux_weight * loss_aux)
        return loss_main.detach(), loss_aux.detach()

    def _step_stage2(self, b: Mapping[str, torch.Tensor], w: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        assert self.stage2 is not None and self.opt2 is not None and self.G is not None
        out = self.stage2(b["prompt_x"], b["resp_h"], b["mask2"])
        if cfg.objective == "classify":
            # L2 = CE_w on logits masked outside K ∪ {y2} (the target class is forced admissible)
            valid = b["admissible"].clone()
            valid[torch.arange(valid.shape[0], device=valid.device), b["y2"]] = True
            loss = F.cross_entropy(out.masked_fill(~valid, cfg.mask_value), b["y2"], weight=w)
        else:
            # CARE-mse: sum_i w_{y2_i} (pred_i - CAG_i)^2 / sum_i w_{y2_i}
            sw = torch.ones_like(b["cag"]) if w is None else w[b["y2"]]
            loss = (sw * (out[:, 0] - b["cag"]) ** 2).sum() / sw.sum()
        self._optimise(self.opt2, loss)
        return loss.detach()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: config, networks (incl. BatchNorm statistics), optimisers,
        replay buffer, update counter, last losses and RNG. Tensors are cloned (later training does not alter a
        saved state) and stored on CPU; only tensors and Python scalars/containers (``weights_only`` safe)."""
        state = super().state_dict()
        state["config"] = self.config.model_dump(mode="python")
        state["n_updates"] = self.n_updates
        state["last_losses"] = dict(self.last_losses)
        state["dims"] = None if self.H is None else {"H": self.H, "G": self.G}
        if self.stage1 is not None:
            assert self.opt1 is not None and self.buffer is not None
            state["stage1"] = {k: v.detach().cpu().clone() for k, v in self.stage1.state_dict().items()}
            state["opt1"] = _cpu_clone(self.opt1.state_dict())
            state["buffer"] = self.buffer.state()
        if self.stage2 is not None:
            assert self.opt2 is not None
            state["stage2"] = {k: v.detach().cpu().clone() for k, v in self.stage2.state_dict().items()}
            state["opt2"] = _cpu_clone(self.opt2.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The saved config must equal this instance's (ValueError names the
        differing fields): networks, optimisers and buffers only make sense with the config that built them."""
        if "config" not in state:
            raise ValueError("CARE.load_state_dict: state has no 'config' (not a CARE state_dict)")
        saved = CAREConfig(**state["config"])
        # the device is where the tensors run, not what they are: a state saved on one device loads on any
        diff = [k for k in CAREConfig.model_fields if k != "device" and getattr(saved, k) != getattr(self.config, k)]
        if diff:
            detail = ", ".join(f"{k}: saved {getattr(saved, k)!r} vs current {getattr(self.config, k)!r}"
                               for k in diff)
            raise ValueError(f"CARE.load_state_dict: config differs from the saved one ({detail}); build the "
                             "strategy with the checkpoint's config")
        super().load_state_dict(state)
        self.n_updates = int(state.get("n_updates", 0))
        self.last_losses = {k: float(v) for k, v in dict(state.get("last_losses", {})).items()}
        dims = state.get("dims")
        self.H = self.G = None
        self.stage1 = self.stage2 = None
        self.opt1 = self.opt2 = None
        self.buffer = None
        if dims is None:
            return
        self._build(int(dims["H"]), int(dims["G"]))
        assert self.stage1 is not None and self.opt1 is not None
        self.stage1.load_state_dict(state["stage1"])
        self.opt1.load_state_dict(copy.deepcopy(state["opt1"]))
        if self.stage2 is not None:
            assert self.opt2 is not None
            if "stage2" not in state:
                raise ValueError("CARE.load_state_dict: config has use_stage2=True but the state has no 'stage2'")
            self.stage2.load_state_dict(state["stage2"])
            self.opt2.load_state_dict(copy.deepcopy(state["opt2"]))
        for opt in (self.opt1, self.opt2):  # a state saved before foreach was set carries foreach=None
            for group in [] if opt is None else opt.param_groups:
                group["foreach"] = True
        self.buffer = _ReplayBuffer.from_state(state["buffer"], device=self.device)
        self.stage1.eval()
        if self.stage2 is not None:
            self.stage2.eval()


@register
class CAREMse(CARE):
    """CARE-mse (paper ablation): Stage II regresses the true CAG instead of classifying the correct count."""

    name: ClassVar[str] = "care-mse"
    description: ClassVar[str] = "CARE ablation: Stage II regresses the CAG (MSE) instead of classifying counts."
    default_objective: ClassVar[Literal["classify", "mse"]] = "mse"


# ================================================================================================ helpers


def resolve_device(spec: str) -> torch.device:
    """The classifier device for a ``CAREConfig.device`` value.

    ``"auto"``: the current CUDA device when CUDA is available AND already initialised in this process (the policy,
    its generation or the hidden-state gather already runs there, so the classifiers follow the policy's
    device), else the CPU. A CUDA machine training on its CPU never initialises CUDA, so it stays on the CPU.
    Any other value is taken as given (``"cpu"``, ``"cuda"``, ``"cuda:N"``; validated by :class:`CAREConfig`).
    """
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _cpu_clone(obj: Any) -> Any:
    """Deep copy with every tensor detached, moved to CPU and cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_clone(v) for v in obj)
    return copy.deepcopy(obj)


def _top_overlap(pred_score: np.ndarray, true_score: np.ndarray, k: int) -> float:
    """``|top_k(pred) ∩ {i : true_i >= k-th largest true}| / k`` (true top set includes ties)."""
    pred_top = top_k(pred_score, k)
    thr = np.sort(true_score)[::-1][min(k, true_score.size) - 1]
    return float((true_score[pred_top] >= thr - 1e-9).sum() / pred_top.size)
