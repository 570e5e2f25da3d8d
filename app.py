"""The WSGI entry point for gunicorn (`gunicorn app:app`); each worker builds its own app and model."""

from nsfw import create_app

app = create_app()
