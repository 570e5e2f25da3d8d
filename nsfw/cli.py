"""The command line: `python -m nsfw PATH_OR_URL...` classifies files, folders and URLs;
`python -m nsfw keys new NAME [--scopes predict+review]` makes an API key (a file called `keys` is
then `./keys`); `python -m nsfw check FILE` answers with its exit code (nsfw/check.py); `python -m
nsfw adapter train|promote|demote|list` manages the adapters learned from the review decisions.

One JSON line per image on stdout, in input order: `{"input": ..., <the model's scores>}` or
`{"input": ..., "error": {"code", "message"}}`, exactly what the HTTP API answers for that image
(same settings from NSFW_*, same limits, same decoding). Folders are walked recursively for image
files (.jpg .jpeg .png .gif .webp .bmp), in sorted order. A progress bar goes to stderr when it is a
terminal. Exit status: 0 when every image was classified, 1 when any failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from nsfw import errors
from nsfw.config import RESIZE_MODES, SCOPES, ConfigError, Settings, parse_api_keys
from nsfw.model import load_classifier
from nsfw.model.specs import MODELS
from nsfw.pipeline.service import Ask, PredictionService, build_service

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"})


def inputs(args: Sequence[str]) -> Iterator[str]:
    """Each argument; a folder expands to the image files under it, sorted."""
    for arg in args:
        path = Path(arg)
        if "://" not in arg and path.is_dir():
            found = (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            yield from (str(p) for p in sorted(found) if not any(part.startswith(".") for part in p.parts))
        else:
            yield arg


def classify(service: PredictionService, item: str, resize: str | None) -> dict[str, Any]:
    try:
        if "://" in item:
            return service.predict_url(item, Ask(resize=resize)).scores
        try:
            with open(item, "rb") as body:
                return service.predict_image(body, Ask(resize=resize)).scores
        except OSError as exc:
            raise errors.UnreadableFile(f"{item}: {exc}") from None
    except errors.NsfwError as exc:
        return exc.to_dict()


def keys_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """`keys new NAME [--scopes ...]`: a fresh random token (32 bytes from the OS's CSPRNG, URL-safe)
    and the NSFW_API_KEYS entry that defines it."""
    parser = argparse.ArgumentParser(prog="python -m nsfw keys", description="API keys for NSFW_API_KEYS")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a fresh key and print its NSFW_API_KEYS entry")
    new.add_argument("name", help="the key's name: what logs and metrics show (A-Z a-z 0-9 _ . -)")
    new.add_argument("--scopes", default="predict", help=f"{' or '.join(SCOPES)}, joined with + (default predict)")
    args = parser.parse_args(argv)
    token = secrets.token_urlsafe(32)
    try:
        (key,) = parse_api_keys(f"{args.name}:{token}:{args.scopes}")
    except ValueError as exc:
        parser.error(str(exc))
    out.write(f"token: {token}\nNSFW_API_KEYS entry: {key.entry()}\n")
    out.write("Add the entry to NSFW_API_KEYS (comma-separated); the token is not stored anywhere else.\n")
    return 0


def db_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """`db upgrade [REVISION]`: migrate the review store (NSFW_DATABASE_URL, or SQLite in
    NSFW_DATA_DIR) to REVISION (default head); gunicorn.conf.py runs it once at each start."""
    parser = argparse.ArgumentParser(prog="python -m nsfw db", description="the review store's schema")
    commands = parser.add_subparsers(dest="command", required=True)
    upgrade = commands.add_parser("upgrade", help="apply the migrations (Alembic) up to a revision")
    upgrade.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        parser.error(str(exc))
    from nsfw.store.engine import make_engine
    from nsfw.store.migrate import revisions
    from nsfw.store.migrate import upgrade as migrate

    migrate(settings.database, args.revision)
    engine = make_engine(settings.database)
    try:
        current, head = revisions(engine)
    finally:
        engine.dispose()
    out.write(f"review store at revision {current} (head {head})\n")
    return 0


def moderators_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """`moderators add NAME | list | remove NAME | role NAME moderator|lead`: who may sign in to the
    review pages, and who is a lead (leads decide escalated items and may undo another's decision), in the review
    store that the NSFW_* settings name (migrated first, so a fresh data folder works). add reads the
    password from a prompt, or from standard input's first line when that is not a terminal."""
    parser = argparse.ArgumentParser(prog="python -m nsfw moderators", description="the review pages' moderators")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("add", help="add a moderator, or set a new password").add_argument("name")
    commands.add_parser("list", help="the moderators' names and roles")
    role = commands.add_parser("role", help="make a moderator a lead, or a moderator again")
    role.add_argument("name")
    role.add_argument("role", choices=("moderator", "lead"))
    commands.add_parser("remove", help="remove a moderator (signed out at their next request)").add_argument("name")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        parser.error(str(exc))
    from nsfw.review import moderators
    from nsfw.store.engine import make_engine
    from nsfw.store.migrate import upgrade

    upgrade(settings.database)
    engine = make_engine(settings.database)
    try:
        if args.command == "list":
            out.write("".join(f"{name} {role}\n" for name, role in sorted(moderators.roles(engine).items())))
            return 0
        if args.command == "role":
            if not moderators.set_role(engine, args.name, args.role):
                parser.error(f"no moderator {args.name}")
            out.write(f"{args.name} is a {args.role}\n")
            return 0
        if args.command == "remove":
            if not moderators.remove(engine, args.name):
                parser.error(f"no moderator {args.name}")
            out.write(f"removed {args.name}\n")
            return 0
        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                parser.error("the passwords differ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        try:
            moderators.add(engine, args.name, password)
        except ValueError as exc:
            parser.error(str(exc))
        out.write(f"moderator {args.name} can sign in at /review/login\n")
        return 0
    finally:
        engine.dispose()


def adapter_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """`adapter train | promote [VERSION] | demote | list [--model NAME]`: adapters learned from the
    moderators' decisions, in the review store that the NSFW_* settings name. train writes a version
    and its report card; promote with no VERSION promotes the newest version if it passed, and
    refuses otherwise (exit 1); each step is audited, and demote turns the tier off again."""
    parser = argparse.ArgumentParser(prog="python -m nsfw adapter", description="adapters learned from decisions")
    parser.add_argument("--model", choices=list(MODELS), help="the model whose adapter (default NSFW_MODEL)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="fit an adapter on the decisions and write its report card")
    promote = commands.add_parser("promote", help="serve a version that passed (default: the newest)")
    promote.add_argument("version", nargs="?", type=int)
    commands.add_parser("demote", help="stop serving the promoted version")
    commands.add_parser("list", help="every version, newest first, and the audit log")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        parser.error(str(exc))
    from nsfw.model.adapter import card_text
    from nsfw.review.adapters import Adapters
    from nsfw.store.engine import make_engine
    from nsfw.store.migrate import upgrade

    spec = MODELS[args.model or settings.model]
    upgrade(settings.database)
    engine = make_engine(settings.database)
    adapters = Adapters.of(engine, settings)
    actor = "cli"
    try:
        if args.command == "list":
            listed = {"versions": adapters.versions(spec.name), "history": adapters.history()}
            if args.json:
                out.write(json.dumps(listed) + "\n")
            else:
                for row in listed["versions"]:
                    card = row["report"]
                    out.write(
                        f"v{row['version']} {row['status']:9} {'passed' if row['passed'] else 'not passed':10} "
                        f"{row['decisions']} decisions, gain {card.get('gain', '-')}, p {card.get('p_value', '-')}\n"
                    )
            return 0
        if args.command == "train":
            row = adapters.train(spec.name, spec.version, actor)
        elif args.command == "promote":
            row = adapters.promote(spec.name, spec.version, actor, args.version)
        else:
            row = adapters.demote(spec.name, actor)
    except errors.NsfwError as exc:
        out.write(f"{exc.message} ({exc.detail})\n" if not args.json else json.dumps(exc.to_dict()) + "\n")
        return 1
    finally:
        engine.dispose()
    if args.json:
        out.write(json.dumps(row) + "\n")
    elif args.command == "train":
        out.write(f"v{row['version']} written ({row['status']})\n" + card_text(row["report"]))
    else:
        out.write(f"{spec.name} adapter v{row['version']} is {row['status']}\n")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["moderators"]:
        return moderators_main(argv[1:], out)
    if argv[:1] == ["keys"]:
        return keys_main(argv[1:], out)
    if argv[:1] == ["db"]:
        return db_main(argv[1:], out)
    if argv[:1] == ["adapter"]:
        return adapter_main(argv[1:], out)
    if argv[:1] == ["check"]:  # the Matrix content scanner's script (nsfw/check.py)
        from nsfw import check

        return check.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m nsfw", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="image files, folders, http(s) URLs")
    parser.add_argument("--model", choices=list(MODELS), help="model to run (default NSFW_MODEL)")
    parser.add_argument("--resize", choices=RESIZE_MODES, help="resize mode (default NSFW_RESIZE)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        if args.model:  # this one model alone, not the server's NSFW_MODELS
            settings = replace(settings, model=args.model, models=())
        classifier = load_classifier(settings)
    except ConfigError as exc:
        parser.error(str(exc))
    service = build_service(settings)
    service.models.set_one(classifier)
    items = list(inputs(args.inputs))
    show = args.progress == "always" or args.progress == "auto" and sys.stderr.isatty() and len(items) > 1
    failed = 0
    for item in tqdm(items, disable=not show, unit="image", file=sys.stderr):
        result = classify(service, item, args.resize)
        failed += "error" in result
        out.write(json.dumps({"input": item, **result}) + "\n")
        out.flush()
    return 1 if failed else 0
