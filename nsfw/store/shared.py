"""The store one worker's features share: its engine, checked against the migrations' head, and the
maintenance thread they register their duties with. Opened by create_app when a feature that keeps
state is on (NSFW_REVIEW), before the features install; started after they all have."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from nsfw.config import ConfigError, StoreSettings
from nsfw.store.engine import make_engine
from nsfw.store.maintenance import Maintenance
from nsfw.store.migrate import revisions


@dataclass
class Store:
    engine: Engine
    maintenance: Maintenance

    def close(self) -> None:
        """The maintenance thread stopped and the features' closers run (maintenance.close), then the
        engine's connections closed: a worker's exit (gunicorn.conf.py worker_exit), or a test's end."""
        self.maintenance.close()
        self.engine.dispose()


def open_store(settings: StoreSettings) -> Store:
    """The engine for NSFW_DATABASE_URL, refused at boot (ConfigError) when the store does not answer
    or its schema is not at the migrations' head (`python -m nsfw db upgrade`, which gunicorn.conf.py
    runs once per start, before any worker)."""
    engine = make_engine(settings.database)
    try:
        current, head = revisions(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ConfigError(f"NSFW_DATABASE_URL: the review store does not answer ({type(exc).__name__})") from None
    if current != head:
        engine.dispose()
        raise ConfigError(
            f"the review store is at revision {current}, not {head}: run `python -m nsfw db upgrade` "
            "(gunicorn.conf.py runs it at each start)"
        )
    return Store(engine, Maintenance())
