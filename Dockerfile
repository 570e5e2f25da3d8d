FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY app.py gunicorn.conf.py ./
COPY nsfw ./nsfw
COPY models ./models
COPY migrations ./migrations

# data/: the review store's default SQLite file (NSFW_DATA_DIR), writable by the service's user.
RUN useradd --create-home --uid 10001 app && mkdir /app/data && chown app /app/data
USER 10001

EXPOSE 8080
# No curl in the slim image: Python asks /health itself.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]
CMD ["gunicorn", "app:app"]
