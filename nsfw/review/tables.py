"""The review queue's tables: items, their refs, frames and hashes, the audit log, the webhook outbox, the
moderators (`metadata`: Alembic's target, migrations/env.py).

The schema is Alembic's (migrations/, one revision per change; the engine and the migration runner are
the store's, nsfw/store/); these Table objects are what the review feature's queries use (queue.py,
webhooks.py, moderators.py), and tests/test_review.py checks that they match what the migrations make.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
    true,
)

from nsfw.store.schema import metadata

__all__ = [
    "adapter_audit",
    "adapter_versions",
    "audit",
    "frames",
    "hashes",
    "metadata",
    "moderators",
    "outbox",
    "refs",
    "reviews",
]

reviews = Table(
    "reviews",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created", Float, nullable=False),
    # unknown (the model could not decide) | audit (a sample) | appeal (a decision the user contests)
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # pending | decided | expired (left undecided past retention)
    Column("sha256", String(64), nullable=False),
    Column("key_name", String(64), nullable=False),
    Column("source_url", Text),
    Column("model", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("scores", Text, nullable=False),  # JSON
    Column("verdict", String(16), nullable=False),  # the automatic label
    Column("reason", Text, nullable=False),
    Column("thumbnail", LargeBinary),  # JPEG, longest side 256; None after retention
    Column("claimed_by", String(64)),
    Column("claim_until", Float),
    Column("decided", Float),  # when it left the queue: decided, or expired
    Column("label", String(16)),  # adult | safe
    Column("decided_by", String(64)),
    Column("note", Text),
    # What the model judged: the image's frame count, and for an animation each classified frame's
    # index and scores (JSON [{"index", "scores"}]) and the index of the frame that decided the verdict
    # (the thumbnail's); NULL for items queued before revision 0004.
    Column("frame_count", Integer),
    Column("frames", Text),
    Column("chosen_frame", Integer),
    # Since when the item waits for a human: queued, or undone (expiry counts from here, not `created`).
    Column("pending_since", Float),
    # The deciding frame's preview (JPEG, longest side NSFW_REVIEW_PREVIEW_PX; None when it would be the
    # thumbnail itself, and after retention) and that frame's own size in pixels (None before 0006).
    Column("preview", LargeBinary),
    Column("width", Integer),
    Column("height", Integer),
    # The reason code the deciding moderator gave (NSFW_REVIEW_REASONS), if any.
    Column("reason_code", String(40)),
    # The sum of the model's adult classes (what the search's score range filters on).
    Column("adult", Float),
    # Escalated to the leads: when and by whom (None: not escalated, or decided since).
    Column("escalated", Float),
    Column("escalated_by", String(64)),
    # An appeal (kind "appeal"): when, the ref and the user's statement the client app sent, and the
    # decision it contests (its label and who made it: another moderator must decide the appeal).
    Column("appealed", Float),
    Column("appeal_ref", String(200)),
    Column("appeal_statement", Text),
    Column("appealed_label", String(16)),
    Column("appealed_decider", String(64)),
    # The deciding frame's embedding (float32 little-endian: the served model's penultimate layer,
    # from the same inference as the scores), what the adapters learn from; None when the model
    # gives none, and for items from before revision 0007.
    Column("embedding", LargeBinary),
    Index("reviews_sha256", "sha256"),
    Index("reviews_decided", "decided"),
    Index("reviews_key_status", "key_name", "status"),
    Index("reviews_status_created", "status", "created"),
    # One pending item per image: the same bytes join it (their refs are kept).
    Index(
        "reviews_one_pending_per_image",
        "sha256",
        unique=True,
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
)

refs = Table(
    "review_refs",
    metadata,
    Column("review_id", String(32), ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
    Column("key_name", String(64), nullable=False),  # the key that sent the ref: its client app's own
    Column("ref", String(200), nullable=False),
    Column("added", Float, nullable=False),
    PrimaryKeyConstraint("review_id", "key_name", "ref"),
)

# An animation's classified frames, each as the moderator sees it (JPEG, longest side 256): the strip
# under the item. Dropped with the thumbnail at retention.
frames = Table(
    "review_frames",
    metadata,
    Column("review_id", String(32), ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),  # 0.. in the animation's order
    Column("frame_index", Integer, nullable=False),
    Column("thumbnail", LargeBinary, nullable=False),
    PrimaryKeyConstraint("review_id", "position"),
)

# Each classified frame's PDQ (nsfw/matching/pdq.py), written with the item: its eight dihedral
# hashes (variant 0..7, 0 the original) and its centre crops' (variant 8.., pdq.CROPS in order). A
# decision copies what it remembers into the matcher's signals (nsfw/matching/store.py); a pending
# item's dihedral hashes are what a decision's retroaction compares.
hashes = Table(
    "review_hashes",
    metadata,
    Column("review_id", String(32), ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),  # the frame's position among the classified ones
    Column("variant", Integer, nullable=False),
    Column("pdq", String(64), nullable=False),
    Column("quality", Integer, nullable=False),
    PrimaryKeyConstraint("review_id", "position", "variant"),
)

audit = Table(
    "review_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),  # claimed | decided | reverted | deleted | expired
    Column("review_id", String(32), nullable=False),
    Column("detail", Text, nullable=False),  # JSON
    Index("review_audit_review", "review_id"),
    Index("review_audit_at", "at"),
)

outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id: the same on every attempt
    Column("review_id", String(32), nullable=False),
    Column("event", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the JSON body, as signed
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("next_at", Float, nullable=False),
    Column("lease_until", Float),  # a sender's claim on the row while it sends...
    Column("lease_token", String(32)),  # ...and whose: only the holder reschedules the row
    Column("last_error", Text),
    Column("created", Float, nullable=False),
    Column("delivered", Float),
    Index("webhook_outbox_due", "status", "next_at"),
    Index("webhook_outbox_review", "review_id"),
)


moderators = Table(
    "moderators",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", Text, nullable=False),  # Argon2id, argon2-cffi's encoding
    Column("created", Float, nullable=False),
    Column("blur", Boolean, nullable=False, server_default=true()),  # thumbnails blurred until revealed
    # A random token in every session cookie of this moderator, checked on every request; a new one
    # (sign-out, a new password) ends every session made before it.
    Column("generation", String(32), nullable=False, server_default="0"),
    # moderator | lead (leads decide escalated items and may undo another's decision).
    Column("role", String(16), nullable=False, server_default="moderator"),
    # The moderator's own wellbeing settings over the operator's defaults (JSON; None: the defaults).
    Column("wellbeing", Text),
)


# Every adapter trained on the decisions (nsfw/review/adapters.py): the model whose embeddings it
# reads, its report card (JSON, nsfw/model/adapter.report_card) and weights (LinearAdapter.to_bytes),
# and its status: candidate (trained) | promoted (the tier; one per model) | demoted.
adapter_versions = Table(
    "adapter_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("model", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("decisions", Integer, nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("report", Text, nullable=False),
    Column("weights", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),
    Column("changed", Float, nullable=False),
    Index(
        "adapter_versions_one_promoted",
        "model",
        unique=True,
        sqlite_where=text("status = 'promoted'"),
        postgresql_where=text("status = 'promoted'"),
    ),
    sqlite_autoincrement=True,
)

# What was done to the adapters, by whom: trained | promoted | demoted.
adapter_audit = Table(
    "adapter_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("detail", Text, nullable=False),  # JSON
    Index("adapter_audit_version", "version"),
)
