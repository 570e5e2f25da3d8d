"""NSFW image moderation service: GantMan's models with nsfwjs-identical scores (and Yahoo's and
Bumble's) behind Flask.

The rooms, each with one job (README, "Architecture"): web/ (the front door, the app's hooks, the
route table, the API), pipeline/ (who may fetch or compute now, one image -> prediction, batches,
verdicts), imaging/ (budget, decode, model-exact resize, per-model recipes, pictures), model/ (the
runtimes, the catalogue, the served registry), fetch.py and cache.py (bytes in, results remembered),
review/ (the human loop), store/ (the database and its maintenance thread); config.py and errors.py
at the bottom.
"""

from __future__ import annotations

from nsfw.config import ConfigError, Settings
from nsfw.web.app import WORKER_BOOT_ERROR, create_app

__all__ = ["WORKER_BOOT_ERROR", "ConfigError", "Settings", "create_app"]
