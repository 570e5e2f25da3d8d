"""Alembic's environment for the store: migrations run on the connection nsfw.store.migrate
hands over (`config.attributes["connection"]`, inside its transaction and lock), or on the URL of
`sqlalchemy.url` when Alembic's own command line runs them."""

from __future__ import annotations

from alembic import context

import nsfw.matching.tables  # noqa: F401 - its tables join the metadata
import nsfw.review.tables  # noqa: F401
from nsfw.store.engine import make_engine
from nsfw.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "", serving=False)
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
    engine.dispose()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
