"""Adapters learned from the moderators' decisions: an L2-regularised logistic regression on the served
model's embeddings (the penultimate layer its dense head reads), its k-fold report card against the
base model, and the gate that decides whether it may be promoted. Pure NumPy, no store, no Flask.

Why these choices:
- Logistic regression: a few dozen to a few thousand decisions on 128 (mobilenet_v2) or 1792
  (mobilenet_v2_mid) features; anything bigger overfits, and the promoted model is a weight vector
  each worker applies in microseconds. NumPy, not scikit-learn: the insights page trains inside the
  serving install, and scikit-learn 1.9.1 would add 197 MB to it (with SciPy, joblib and threadpoolctl,
  measured by pip install --target; the serving install is 424 MB) for one solver.
- The fit runs in the span of the training rows: with an L2 penalty on the weights, the optimum lies
  in the row space of the (standardised) features (representer theorem), so Newton's method works on
  at most n coordinates however wide the embedding; exact, and a few milliseconds.
- Agreement is balanced: the mean of the agreement on the items humans called adult and on those
  they called safe. A model that always says the queue's more common label scores 50, as a coin
  does, whatever the mix; plain accuracy would reward it for the mix alone.
- Agreement compares each model's lean (the base model: its adult classes sum to at least a half;
  the adapter: p >= 0.5) with the human label. At the thresholds in force most queued items are
  `unknown` to the base model by construction (that is why a human saw them), so agreement there
  would make any adapter, even one fitted to noise, look better; the report card gives those
  counts too (false positives, false negatives, left to humans), for both.
- Each label weighs the same in the fit, however many decisions it has. The queue's mix is not the
  traffic's (it holds what the base model could not decide, and audit samples), so how often each
  label came up there is nothing to learn; and an adapter that learnt it would beat the base model
  on the queue's own items by always saying its more common label, with labels that carry no
  information at all (measured on synthetic embeddings: shuffled labels at 27 % adult passed a
  plain-accuracy gate, 2 points and p < 0.01, 76 times in 200 without this weighting, and still 54
  times with it: held out, a fit on noise leans to the common label anyway; hence balanced agreement).
- The gate: a margin alone is not enough (on 80 items a 2-point margin promotes an adapter fitted to
  shuffled labels about one time in twenty), so the gain must also survive an exact one-sided
  paired test on the same held-out items (McNemar's, stratified by label for the balanced
  agreement): only the items where exactly one of the two is right count, and under "no better"
  each of them is a fair coin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The penalty on the standardised weights (the loss is a sum over items, so its weight grows with n).
L2 = 1.0
FOLDS = 5
NEWTON_STEPS = 50
# Held-out predictions are reproducible: the folds are drawn from this seed.
SEED = 0


@dataclass(frozen=True)
class Gate:
    """NSFW_ADAPTER_MIN_GAIN (points of agreement), NSFW_ADAPTER_MIN_ITEMS, NSFW_ADAPTER_MAX_P."""

    min_gain: float = 2.0
    min_items: int = 50
    max_p: float = 0.001


@dataclass(frozen=True)
class LinearAdapter:
    """p(adult) = sigmoid(weights . embedding + bias), standardisation folded into the weights."""

    weights: np.ndarray  # float64 [D]
    bias: float

    def probability(self, embedding: np.ndarray) -> float:
        return _sigmoid(float(np.dot(self.weights, np.asarray(embedding, np.float64))) + self.bias)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        z = np.asarray(embeddings, np.float64) @ self.weights + self.bias
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow

    def to_bytes(self) -> bytes:
        """Little-endian float64: the bias, then the weights (the store's `weights` column)."""
        return np.concatenate([[self.bias], self.weights]).astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LinearAdapter:
        values = np.frombuffer(raw, "<f8")
        if values.size < 2 or not np.isfinite(values).all():
            raise ValueError("an adapter needs a bias and at least one finite weight")
        return cls(values[1:].copy(), float(values[0]))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def fit(x: np.ndarray, y: np.ndarray, l2: float = L2, groups: np.ndarray | None = None) -> LinearAdapter:
    """The L2-regularised logistic regression of y (1 adult, 0 safe) on x [n, D]; with `groups`, the
    copies of one picture share one picture's weight."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0  # a feature that never changes (a dead ReLU) carries nothing
    standard = (x - mean) / scale
    # The fit lives in the rows' span: standard = U S Vt, weights = Vt.T a, features U S.
    u, s, vt = np.linalg.svd(standard, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10
    z = u[:, keep] * s[keep]
    a, bias = _newton(z, y, _balanced(y, groups), l2)
    w_standard = vt[keep].T @ a
    weights = w_standard / scale
    return LinearAdapter(weights, float(bias - np.dot(weights, mean)))


def _balanced(y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each item's weight: each picture (group) weighs one, shared by its copies, and each label's
    pictures weigh half of them all."""
    labels = y.astype(np.int64)
    pictures = Pictures.of(y, groups)
    share = 1.0 / pictures.sizes[pictures.index]
    totals = np.array([share[labels == 0].sum(), share[labels == 1].sum()])
    return share * share.sum() / (2.0 * np.maximum(totals, 1e-12))[labels]


def _newton(z: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Minimise sum(weight * logloss(z a + b, y)) + l2/2 |a|^2 by Newton's method (the bias not penalised)."""
    n, r = z.shape
    design = np.hstack([z, np.ones((n, 1))])
    penalty = np.full(r + 1, l2)
    penalty[-1] = 1e-8  # keeps the bias's row of the Hessian invertible when every label is equal
    theta = np.zeros(r + 1)
    for _ in range(NEWTON_STEPS):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ theta)))
        gradient = design.T @ (weight * (p - y)) + penalty * theta
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return theta[:-1], float(theta[-1])


@dataclass(frozen=True)
class Pictures:
    """Items grouped into pictures: the copies of one picture (the same bytes, a copied decision,
    near PDQ hashes) share a group; without groups each item is its own picture."""

    index: np.ndarray  # each item's picture, 0..len(sizes)-1
    sizes: np.ndarray  # each picture's number of items
    label: np.ndarray  # each picture's majority label (1 adult, 0 safe; a tie is adult)

    @classmethod
    def of(cls, y: np.ndarray, groups: np.ndarray | None = None) -> Pictures:
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        _, index = np.unique(groups, return_inverse=True)
        sizes = np.bincount(index)
        label = (np.bincount(index, weights=y, minlength=len(sizes)) * 2 >= sizes).astype(np.int64)
        return cls(index, sizes, label)

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Each picture's mean of a value of its items."""
        return np.bincount(self.index, weights=values, minlength=len(self.sizes)) / self.sizes

    @property
    def adult(self) -> int:
        return int(self.label.sum())

    @property
    def safe(self) -> int:
        return len(self.label) - self.adult


def folds_of(pictures: Pictures, k: int, seed: int = SEED) -> np.ndarray:
    """Each item's fold, 0..k-1. The items of one picture share a fold, so no copy is judged by an
    adapter that saw its twin; pictures are stratified by their majority label: each label's
    pictures, shuffled (seeded), largest first, each to the fold with the fewest items of that label
    so far."""
    rng = np.random.default_rng(seed)
    picture_fold = np.empty(len(pictures.sizes), np.int64)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(pictures.label == label))
        members = members[np.argsort(-pictures.sizes[members], kind="stable")]
        filled = np.zeros(k, np.int64)
        for g in members:
            f = int(np.argmin(filled))
            picture_fold[g] = f
            filled[f] += pictures.sizes[g]
    return picture_fold[pictures.index]


@dataclass(frozen=True)
class Calls:
    """One model's calls on the held-out items against the humans' labels."""

    agreement: float  # balanced: the mean of the percent agreed on adult-labelled and on safe-labelled items
    agreed: int  # items where the model's lean is the human label
    agreed_adult: int  # of the items humans called adult
    agreed_safe: int  # of those they called safe
    adult: int  # verdicts at the thresholds in force
    safe: int
    unknown: int  # left to humans
    false_positives: int  # called adult, a human said safe
    false_negatives: int  # called safe, a human said adult

    @classmethod
    def of(cls, p_adult: np.ndarray, y: np.ndarray, adult_threshold: float, safe_threshold: float) -> Calls:
        right = (p_adult >= 0.5) == (y == 1)
        agreed_adult, agreed_safe = int(np.sum(right & (y == 1))), int(np.sum(right & (y == 0)))
        adult = p_adult >= adult_threshold
        safe = (1.0 - p_adult) >= safe_threshold
        return cls(
            agreement=round(balanced(right, y), 2),
            agreed=agreed_adult + agreed_safe,
            agreed_adult=agreed_adult,
            agreed_safe=agreed_safe,
            adult=int(adult.sum()),
            safe=int(safe.sum()),
            unknown=int(len(y) - adult.sum() - safe.sum()),
            false_positives=int(np.sum(adult & (y == 0))),
            false_negatives=int(np.sum(safe & (y == 1))),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement,
            "agreed": self.agreed,
            "agreed_adult": self.agreed_adult,
            "agreed_safe": self.agreed_safe,
            "adult": self.adult,
            "safe": self.safe,
            "unknown": self.unknown,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
        }


def balanced(right: np.ndarray, y: np.ndarray) -> float:
    """Percent right on the adult-labelled items and on the safe-labelled ones, averaged."""
    return 50.0 * (float(np.mean(right[y == 1])) + float(np.mean(right[y == 0])))


def paired_p(adapter_only: tuple[int, int], base_only: tuple[int, int], counts: tuple[int, int]) -> float:
    """Exact one-sided paired test of balanced agreement (McNemar's, stratified by label).

    adapter_only / base_only: per label (adult, safe), the items only the adapter / only the base
    model got right; counts: the items of each label. An item of label c moves the balanced
    agreement by 50 / counts[c] points. Under "the adapter is no better" each discordant item favours
    either side with probability 1/2, independently; p is the chance of a difference at least as
    large as the one seen (two binomials, summed exactly).
    """
    weights = [50.0 / max(c, 1) for c in counts]
    observed = sum(w * (a - b) for w, a, b in zip(weights, adapter_only, base_only, strict=True))
    n_adult, n_safe = adapter_only[0] + base_only[0], adapter_only[1] + base_only[1]
    if n_adult + n_safe == 0:
        return 1.0
    # P(difference >= observed) = sum over i (adult items favouring the adapter) of
    # P(i) * P(j >= the least j that reaches it): one binomial's tail per i, O(n).
    adult_pmf, safe_pmf = _binomial_half(n_adult), _binomial_half(n_safe)
    safe_tail = np.concatenate([np.cumsum(safe_pmf[::-1])[::-1], [0.0]])  # safe_tail[j] = P(J >= j)
    p = 0.0
    for i in range(n_adult + 1):
        need = (observed - 1e-9 - weights[0] * (2 * i - n_adult)) / weights[1]  # 2j - n_safe >= need
        j = max(0, math.ceil((need + n_safe) / 2))
        if j <= n_safe:
            p += adult_pmf[i] * safe_tail[j]
    return min(1.0, p)


def _binomial_half(n: int) -> np.ndarray:
    """P(k of n fair coins), k = 0..n, from log-gamma (exact enough, and no big integers)."""
    k = np.arange(n + 1)
    log_comb = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    return np.exp(log_comb - n * math.log(2.0))


def report_card(
    x: np.ndarray,
    y: np.ndarray,
    base_adult: np.ndarray,
    *,
    adult_threshold: float,
    safe_threshold: float,
    gate: Gate,
    groups: np.ndarray | None = None,
    l2: float = L2,
    folds: int = FOLDS,
) -> dict[str, Any]:
    """k-fold cross-validated agreement of the adapter and of the base model (its adult classes' sum
    on the same items) with the human labels y (1 adult, 0 safe), side by side, and the gate's word.
    `groups`: items that are copies of one picture share a group (and so a fold)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    base_adult = np.asarray(base_adult, np.float64)
    n = len(y)
    card: dict[str, Any] = {
        "items": n,
        "adult": int(np.sum(y == 1)),
        "safe": int(np.sum(y == 0)),
        "thresholds": {"adult": adult_threshold, "safe": safe_threshold},
        "gate": {"min_gain": gate.min_gain, "min_items": gate.min_items, "max_p": gate.max_p},
        "l2": l2,
    }
    pictures = Pictures.of(y, groups)
    card["pictures"] = len(pictures.sizes)
    k = min(folds, pictures.adult, pictures.safe)
    if k < 2:
        card |= {"folds": 0, "passed": False, "why": "needs at least two distinct pictures of each label"}
        return card
    fold = folds_of(pictures, k)
    held_out = np.empty(n)
    for f in range(k):
        test = fold == f
        held_out[test] = fit(x[~test], y[~test], l2, pictures.index[~test]).probabilities(x[test])
    # Judged by picture: each picture one vote (its copies' mean held-out p and base sum, its majority
    # label), so a picture decided many times (a viral repost, copies decided by retroaction) counts
    # once in the agreement, the counts and the paired test.
    held_out, base_adult, y = pictures.mean(held_out), pictures.mean(base_adult), pictures.label
    base = Calls.of(base_adult, y, adult_threshold, safe_threshold)
    adapter = Calls.of(held_out, y, adult_threshold, safe_threshold)
    base_right = (base_adult >= 0.5) == (y == 1)
    adapter_right = (held_out >= 0.5) == (y == 1)
    adapter_only = tuple(int(np.sum(adapter_right & ~base_right & (y == c))) for c in (1, 0))
    base_only = tuple(int(np.sum(base_right & ~adapter_right & (y == c))) for c in (1, 0))
    gain = round(adapter.agreement - base.agreement, 2)
    p = paired_p(adapter_only, base_only, (pictures.adult, pictures.safe))
    why = []
    if card["pictures"] < gate.min_items:
        why.append(f"{card['pictures']} distinct pictures decided, fewer than {gate.min_items}")
    if gain < gate.min_gain:
        why.append(f"gain {gain} points, less than {gate.min_gain}")
    if p > gate.max_p:
        why.append(
            f"p = {p:.3g} > {gate.max_p} (paired test: {sum(adapter_only)} pictures only the adapter got right, "
            f"{sum(base_only)} only the base model)"
        )
    card |= {
        "folds": k,
        "base": base.to_dict(),
        "adapter": adapter.to_dict(),
        "gain": gain,
        "adapter_only": {"adult": adapter_only[0], "safe": adapter_only[1]},
        "base_only": {"adult": base_only[0], "safe": base_only[1]},
        "p_value": p,
        "passed": not why,
        "why": "; ".join(why) if why else "beats the base model on held-out decisions, by the margin, significantly",
    }
    return card


@dataclass(frozen=True)
class Served:
    """A promoted adapter as a worker holds it: its version, and the model (name and version) whose
    embeddings it reads."""

    version: int
    model: str
    model_version: str
    adapter: LinearAdapter


class Promoted:
    """The promoted adapter of each model, as this worker last read them from the store (replaced
    whole, never changed in place, so a request reads one consistent set without a lock)."""

    def __init__(self) -> None:
        self._by_model: dict[str, Served] = {}

    def replace(self, served: list[Served]) -> None:
        self._by_model = {s.model: s for s in served}

    def versions(self) -> dict[str, int]:
        return {model: s.version for model, s in self._by_model.items()}

    def ask(self, model: str, model_version: str, embedding: np.ndarray) -> tuple[int, float] | None:
        """(version, p(adult)) of the model's promoted adapter on one embedding; None when there is
        none, or it was trained on another version or width of the model's embeddings."""
        served = self._by_model.get(model)
        if served is None or served.model_version != model_version or served.adapter.weights.size != embedding.size:
            return None
        if not np.isfinite(embedding).all():  # a broken frame's features: nothing to ask about
            return None
        p = served.adapter.probability(embedding)
        return None if not math.isfinite(p) else (served.version, p)


def card_text(card: dict[str, Any]) -> str:
    """The report card as a plain-text table (the command line's)."""
    lines = [
        f"{card.get('model', '?')}: {card['items']} decisions ({card['adult']} adult, {card['safe']} safe) "
        f"of {card.get('pictures', card['items'])} distinct pictures, "
        f"{card['folds']}-fold cross-validation, thresholds adult {card['thresholds']['adult']} "
        f"safe {card['thresholds']['safe']}",
    ]
    if "base" in card:
        rows = [
            ("agreement (balanced, %)", "agreement"),
            ("agreed, adult pictures", "agreed_adult"),
            ("agreed, safe pictures", "agreed_safe"),
            ("called adult", "adult"),
            ("called safe", "safe"),
            ("left to humans", "unknown"),
            ("false positives", "false_positives"),
            ("false negatives", "false_negatives"),
        ]
        lines.append(f"{'':26}{'base model':>12}{'adapter':>12}")
        lines += [f"{title:26}{card['base'][key]:>12}{card['adapter'][key]:>12}" for title, key in rows]
        lines.append(f"gain {card['gain']} points, paired test p = {card['p_value']:.3g}")
    lines.append(("PASSED: " if card["passed"] else "NOT PASSED: ") + card["why"])
    return "\n".join(lines) + "\n"
