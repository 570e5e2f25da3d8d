"""The adapters' life in the store: training on the decided items' embeddings, every version with its
report card, promotion and demotion (one promoted version per model, each change audited and
reversible), and each worker's copy of the promoted ones.

The learning itself is nsfw/model/adapter.py (pure NumPy); this module only reads and writes the
store (tables.adapter_versions, tables.adapter_audit, and the decided rows of tables.reviews).
What an adapter learns from: every item a human decided adult or safe (an appeal's outcome
included, an item still pending or expired not), made by the same model and model version, with an
embedding; the newest `max_items` of them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np
from sqlalchemy import Engine, desc, insert, select, update
from sqlalchemy.exc import IntegrityError

from nsfw import metrics
from nsfw.config import Settings
from nsfw.errors import AdapterRefused, NotEnoughDecisions, NsfwError, UnknownAdapter
from nsfw.matching.pdq import distances, packed
from nsfw.model import embedding_of
from nsfw.model.adapter import Gate, LinearAdapter, Promoted, Served, fit, report_card
from nsfw.pipeline.verdict import Policy
from nsfw.review.insights import adult_score
from nsfw.review.queue import copied_from
from nsfw.review.tables import adapter_audit, adapter_versions, audit, hashes, reviews
from nsfw.store.engine import reading, transaction_lock

log = logging.getLogger(__name__)

CANDIDATE, PROMOTED, DEMOTED = "candidate", "promoted", "demoted"
# How often each worker reads which versions are promoted (a tiny query): a promotion serves in
# every worker within about this long.
REFRESH_EVERY = 2.0
# A page's training that has not ended within this (its worker killed or restarted) no longer counts
# as running.
TRAINING_HORIZON = 900.0


class Adapters:
    def __init__(
        self,
        engine: Engine,
        gate: Gate,
        thresholds: Policy,  # the verdict thresholds in force: the card counts false positives at them
        max_items: int = 5000,
        near: int = 31,
        min_quality: int = 50,
    ) -> None:
        self.engine = engine
        self.gate = gate
        self.thresholds = thresholds
        self.max_items = max_items
        self.near = near  # PDQ distance within which two decided pictures are one (NSFW_MATCH_DISTANCE)
        self.min_quality = min_quality  # PDQ quality below which a hash says nothing (NSFW_MATCH_MIN_QUALITY)

    @classmethod
    def of(cls, engine: Engine, settings: Settings) -> Adapters:
        """The adapters as the settings define them (the gate, the thresholds in force, the sizes)."""
        return cls(
            engine,
            Gate(settings.adapter_min_gain, settings.adapter_min_items, settings.adapter_max_p),
            Policy.of(settings.verdicts),
            settings.adapter_max_items,
            settings.match_distance,
            settings.match_min_quality,
        )

    def training_set(
        self, model: str, model_version: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """(embeddings [n, D], labels 1 adult / 0 safe, the base model's adult sums, each item's group,
        rows left out) of the newest decided items of this model. Items whose embedding has another
        width than the newest's, or holds a value that is not finite, are left out (and counted).
        Copies of one picture share a group: the same bytes, a decision copied to a near-duplicate
        (the audit's match), or PDQ hashes within the matcher's distance (cross-validation keeps a
        group in one fold: a copy judged by an adapter that saw its twin proves nothing)."""
        query = (
            select(
                reviews.c.id,
                reviews.c.sha256,
                reviews.c.embedding,
                reviews.c.label,
                reviews.c.adult,
                reviews.c.scores,
                reviews.c.model,
            )
            .where(
                reviews.c.status == "decided",
                reviews.c.label.in_(("adult", "safe")),
                reviews.c.model == model,
                reviews.c.model_version == model_version,
                reviews.c.embedding.is_not(None),
            )
            .order_by(desc(reviews.c.decided), desc(reviews.c.id))
            .limit(self.max_items)
        )
        with reading(self.engine) as connection:  # every read first: the grouping runs after it closes
            rows = connection.execute(query).all()
            width = len(rows[0].embedding) if rows else 0
            kept = [row for row in rows if len(row.embedding) == width and width % 4 == 0]
            vectors = [embedding_of(row.embedding) for row in kept]
            finite = [n for n, vector in enumerate(vectors) if np.isfinite(vector).all()]
            kept, vectors = [kept[n] for n in finite], [vectors[n] for n in finite]
            copies, hashed = self._copies(connection, [row.id for row in kept])
        if not kept:
            return np.zeros((0, 0)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), len(rows)
        x = np.stack(vectors).astype(np.float64)
        y = np.array([1 if row.label == "adult" else 0 for row in kept], np.int64)
        base = np.array([_adult_sum(row) for row in kept], np.float64)
        return x, y, base, self._groups(kept, copies, hashed), len(rows) - len(kept)

    def _copies(self, connection: Any, ids: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """What tells copies apart, read in chunks: (item, source) of each decision the audit says was
        copied from a near-duplicate, and (item, PDQ) of each item's first frame's own hash, when its
        quality is enough for the matcher to trust it (NSFW_MATCH_MIN_QUALITY: a flat frame's hash
        is near every other flat frame's)."""
        copied: list[tuple[str, str]] = []
        hashed: list[tuple[str, str]] = []
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            for review_id, detail in connection.execute(
                select(audit.c.review_id, audit.c.detail).where(
                    audit.c.review_id.in_(part), audit.c.action == "decided", audit.c.detail.like('%"match"%')
                )
            ):
                if (source := copied_from(detail)) is not None:
                    copied.append((review_id, source))
            hashed += connection.execute(
                select(hashes.c.review_id, hashes.c.pdq).where(
                    hashes.c.review_id.in_(part),
                    hashes.c.position == 0,
                    hashes.c.variant == 0,
                    hashes.c.quality >= self.min_quality,
                )
            ).all()
        return copied, hashed

    def _groups(self, rows: list[Any], copied: list[tuple[str, str]], hashed: list[tuple[str, str]]) -> np.ndarray:
        """Each row's group: union-find over the same sha256, the audit's copied decisions, and first
        frames within the matcher's PDQ distance (one hash per item: n^2 / 2 comparisons of 256
        bits, 0.1 s for 5000 items on one core)."""
        position = {row.id: n for n, row in enumerate(rows)}
        parent = list(range(len(rows)))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        def union(a: int, b: int) -> None:
            parent[find(a)] = find(b)

        first: dict[str, int] = {}
        for n, row in enumerate(rows):
            union(n, first.setdefault(row.sha256, n))
        for review_id, source in copied:
            if review_id in position and source in position:
                union(position[review_id], position[source])
        if hashed:
            owner = np.array([position[review_id] for review_id, _ in hashed])
            words = packed([pdq for _, pdq in hashed])
            for n, (_, pdq) in enumerate(hashed):
                for m in owner[n + 1 :][distances(words[:, n + 1 :], pdq) <= self.near].tolist():
                    union(int(owner[n]), m)
        return np.array([find(n) for n in range(len(rows))], np.int64)

    def train(self, model: str, model_version: str, actor: str) -> dict[str, Any]:
        """Fit an adapter on every decision there is, write its report card (k-fold, against the base
        model) and the version (a candidate: promotion is a separate, audited step)."""
        x, y, base, groups, dropped = self.training_set(model, model_version)
        if len(y) == 0 or y.min() == y.max() or min(int(y.sum()), int(len(y) - y.sum())) < 2:
            raise NotEnoughDecisions(f"{model}: {len(y)} decisions, {int(y.sum())} adult")
        started = time.perf_counter()
        card = report_card(
            x,
            y,
            base,
            adult_threshold=self.thresholds.adult_threshold,
            safe_threshold=self.thresholds.safe_threshold,
            gate=self.gate,
            groups=groups,
        )
        adapter = fit(x, y, groups=groups)
        if not (np.isfinite(adapter.weights).all() and np.isfinite(adapter.bias)):
            raise NotEnoughDecisions(f"{model}: the fit did not converge to finite weights")
        card |= {
            "model": model,
            "model_version": model_version,
            "embedding_size": int(x.shape[1]),
            "left_out": dropped,
        }
        card["seconds"] = round(time.perf_counter() - started, 3)
        now = time.time()
        with self.engine.begin() as connection:
            version = connection.execute(
                insert(adapter_versions)
                .values(
                    model=model,
                    model_version=model_version,
                    created=now,
                    created_by=actor,
                    decisions=len(y),
                    passed=bool(card["passed"]),
                    report=json.dumps(card),
                    weights=adapter.to_bytes(),
                    status=CANDIDATE,
                    changed=now,
                )
                .returning(adapter_versions.c.version)
            ).scalar_one()
            detail = {"model": model, "passed": card["passed"], "items": len(y)}
            _audit(connection, now, actor, "trained", version, detail)
        metrics.ADAPTER_TRAININGS.labels(model, "passed" if card["passed"] else "failed").inc()
        return self.get(model, version)

    def begin_training(self, model: str, actor: str) -> bool:
        """Mark a training of the model as running (the log's `training` entry); False when one is."""
        now = time.time()
        with self.engine.begin() as connection:
            transaction_lock(connection, f"nsfw-adapter-training:{model}")  # two workers' buttons take turns
            if self._training(connection, model, now)["running"] is not None:
                return False
            _audit(connection, now, actor, "training", 0, {"model": model})
        return True

    def training_failed(self, model: str, actor: str, why: str) -> None:
        with self.engine.begin() as connection:
            _audit(connection, time.time(), actor, "failed", 0, {"model": model, "why": why[:500]})

    def training_state(self, model: str) -> dict[str, Any]:
        """{"running": {"by", "since"} | None, "failed": {"by", "at", "why"} | None}: the model's last
        training as the log says (a failure shows until the next training)."""
        with reading(self.engine) as connection:
            return self._training(connection, model, time.time())

    @staticmethod
    def _training(connection: Any, model: str, now: float) -> dict[str, Any]:
        rows = connection.execute(
            select(adapter_audit)
            .where(adapter_audit.c.action.in_(("training", "trained", "failed")))
            .order_by(desc(adapter_audit.c.id))
            .limit(100)
        ).all()
        for row in rows:
            detail = json.loads(row.detail)
            if detail.get("model") != model:
                continue
            if row.action == "training" and now - row.at < TRAINING_HORIZON:
                return {"running": {"by": row.actor, "since": row.at}, "failed": None}
            if row.action == "failed":
                return {"running": None, "failed": {"by": row.actor, "at": row.at, "why": detail.get("why")}}
            break
        return {"running": None, "failed": None}

    def get(self, model: str, version: int) -> dict[str, Any]:
        with reading(self.engine) as connection:
            row = connection.execute(
                select(*_LISTED).where(adapter_versions.c.model == model, adapter_versions.c.version == version)
            ).first()
        if row is None:
            raise UnknownAdapter(f"{model} v{version}")
        return _listed(row)

    def versions(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every version, newest first (without weights)."""
        query = select(*_LISTED).order_by(desc(adapter_versions.c.version))
        if model is not None:
            query = query.where(adapter_versions.c.model == model)
        with reading(self.engine) as connection:
            return [_listed(row) for row in connection.execute(query)]

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The audit log of the adapters, newest first."""
        query = select(adapter_audit).order_by(desc(adapter_audit.c.id)).limit(limit)
        with reading(self.engine) as connection:
            return [
                {
                    "at": row.at,
                    "actor": row.actor,
                    "action": row.action,
                    "version": row.version,
                    "detail": json.loads(row.detail),
                }
                for row in connection.execute(query)
            ]

    def promote(self, model: str, model_version: str, actor: str, version: int | None = None) -> dict[str, Any]:
        """Make `version` (None: the newest of this model) the model's tier, demoting the one promoted
        before it; refused unless it passed the gate and reads this model version's embeddings."""
        now = time.time()
        try:
            with self.engine.begin() as connection:
                # Every version of the model, locked (PostgreSQL): promotions of one model take turns.
                connection.execute(
                    select(adapter_versions.c.version).where(adapter_versions.c.model == model).with_for_update()
                ).all()
                query = select(*_LISTED).where(adapter_versions.c.model == model)
                if version is None:
                    query = query.order_by(desc(adapter_versions.c.version)).limit(1)
                else:
                    query = query.where(adapter_versions.c.version == version)
                row = connection.execute(query).first()
                if row is None:
                    raise UnknownAdapter(f"{model} v{version}" if version is not None else f"{model}: no version")
                if not row.passed:
                    raise AdapterRefused(f"{model} v{row.version} did not pass: {json.loads(row.report).get('why')}")
                if row.model_version != model_version:
                    raise AdapterRefused(f"{model} v{row.version} reads {row.model_version}, served {model_version}")
                if row.status == PROMOTED:
                    return _listed(row)
                before = _demote_promoted(connection, model, now)
                if before is not None:
                    _audit(connection, now, actor, "demoted", before, {"replaced_by": row.version})
                connection.execute(
                    update(adapter_versions)
                    .where(adapter_versions.c.version == row.version)
                    .values(status=PROMOTED, changed=now)
                )
                _audit(connection, now, actor, "promoted", row.version, {"replaced": before})
        except IntegrityError:
            # Another promotion of this model committed between our read and our write (the partial
            # unique index keeps one promoted version per model): the caller may try again.
            raise AdapterRefused(f"{model}: another promotion ran at the same moment") from None
        log.info("adapter %s v%s promoted by %s", model, row.version, actor)
        return self.get(model, row.version)

    def demote(self, model: str, actor: str) -> dict[str, Any]:
        """The model's promoted version back to a demoted one: the tier is off until the next promotion."""
        now = time.time()
        with self.engine.begin() as connection:
            version = _demote_promoted(connection, model, now)
            if version is None:
                raise UnknownAdapter(f"{model}: no promoted version")
            _audit(connection, now, actor, "demoted", version, {})
        log.info("adapter %s v%s demoted by %s", model, version, actor)
        return self.get(model, version)

    def promoted_read(self) -> tuple[dict[str, int], list[Served]]:
        """The promoted versions as one read saw them ({model: version}, damaged ones included), and
        those it could load. A version whose weights cannot be read (a damaged row) is left out,
        logged and counted: that model's tier is off, every other model's is served."""
        query = select(
            adapter_versions.c.version,
            adapter_versions.c.model,
            adapter_versions.c.model_version,
            adapter_versions.c.weights,
        ).where(adapter_versions.c.status == PROMOTED)
        with reading(self.engine) as connection:
            rows = connection.execute(query).all()
        served = []
        read = {row.model: row.version for row in rows}
        for row in rows:
            try:
                served.append(Served(row.version, row.model, row.model_version, LinearAdapter.from_bytes(row.weights)))
            except ValueError as exc:
                log.error("adapter %s v%s not served: its weights cannot be read (%s)", row.model, row.version, exc)
                metrics.REVIEW_STORE_ERRORS.labels("adapter_weights").inc()
        return read, served


class Trainer:
    """The insights page's training, off the request, on a thread of its own (5000 decisions of
    mobilenet_v2_mid's 1792 features take over a minute on one core, past gunicorn's timeout). One at
    a time across every worker and instance: the store's adapter log holds a `training` entry until
    a `trained` or `failed` one follows (or TRAINING_HORIZON passes: its worker was killed), and
    every worker's page reads it there."""

    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters
        self.thread: threading.Thread | None = None

    def start(self, model: str, model_version: str, actor: str) -> bool:
        """Start one; False when one is running already (in any worker)."""
        if not self.adapters.begin_training(model, actor):
            return False
        self.thread = threading.Thread(
            target=self._run, args=(model, model_version, actor), name="adapter-training", daemon=True
        )
        self.thread.start()
        return True

    def _run(self, model: str, model_version: str, actor: str) -> None:
        try:
            self.adapters.train(model, model_version, actor)
            return
        except NsfwError as exc:
            why = f"{exc.message} ({exc.detail})" if exc.detail else exc.message
        except Exception as exc:  # noqa: BLE001 - the store failed, or a bug: said on the page and in the log
            log.exception("adapter training failed")
            metrics.REVIEW_STORE_ERRORS.labels("adapter_train").inc()
            why = f"The training failed ({type(exc).__name__}); see the log."
        try:
            self.adapters.training_failed(model, actor, why)
        except Exception:  # noqa: BLE001 - the store is down: the entry lapses after TRAINING_HORIZON
            log.exception("the failed training could not be recorded")


class Follower:
    """Keeps a worker's Promoted equal to the store's promoted versions: a tiny query of the versions
    every REFRESH_EVERY seconds (the maintenance thread), and the weights only when they changed."""

    def __init__(self, adapters: Adapters, promoted: Promoted) -> None:
        self.adapters = adapters
        self.promoted = promoted
        self._read: dict[str, int] = {}  # the promoted versions the store listed at the last change

    def refresh(self) -> None:
        query = select(adapter_versions.c.model, adapter_versions.c.version).where(
            adapter_versions.c.status == PROMOTED
        )
        with reading(self.adapters.engine) as connection:
            now = {row.model: row.version for row in connection.execute(query)}
        if now == self._read:
            return
        before = self.promoted.versions()
        # The versions and their weights from one read: what is served is exactly what `_read` says
        # was read (a change between two reads would leave a worker on a set it never compares again).
        read, served = self.adapters.promoted_read()
        self.promoted.replace(served)
        self._read = read  # a damaged row is reported once, not every refresh
        after = self.promoted.versions()
        for model in set(before) | set(after):
            metrics.ADAPTER_VERSION.labels(model).set(after.get(model, 0))
        log.info("adapters served: %s", self.promoted.versions() or "none")


_LISTED = (
    adapter_versions.c.version,
    adapter_versions.c.model,
    adapter_versions.c.model_version,
    adapter_versions.c.created,
    adapter_versions.c.created_by,
    adapter_versions.c.decisions,
    adapter_versions.c.passed,
    adapter_versions.c.report,
    adapter_versions.c.status,
    adapter_versions.c.changed,
)


def _listed(row: Any) -> dict[str, Any]:
    return {
        "version": row.version,
        "model": row.model,
        "model_version": row.model_version,
        "created": row.created,
        "created_by": row.created_by,
        "decisions": row.decisions,
        "passed": bool(row.passed),
        "status": row.status,
        "changed": row.changed,
        "report": json.loads(row.report),
    }


def _adult_sum(row: Any) -> float:
    """The base model's adult sum for an item (its column; from its scores for a row without one)."""
    if row.adult is not None:
        return float(row.adult)
    return adult_score(str(row.model), json.loads(row.scores))


def _demote_promoted(connection: Any, model: str, now: float) -> int | None:
    """The model's promoted version, demoted; None when none was promoted."""
    version: int | None = connection.execute(
        update(adapter_versions)
        .where(adapter_versions.c.model == model, adapter_versions.c.status == PROMOTED)
        .values(status=DEMOTED, changed=now)
        .returning(adapter_versions.c.version)
    ).scalar_one_or_none()
    return version


def _audit(connection: Any, now: float, actor: str, action: str, version: int, detail: dict[str, Any]) -> None:
    connection.execute(
        insert(adapter_audit).values(at=now, actor=actor, action=action, version=version, detail=json.dumps(detail))
    )
