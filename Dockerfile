# Production image: gunicorn (web), celery worker and celery beat all run from it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Pango + fonts for rendering documents (e.g. invoice PDFs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, so code changes don't bust this layer. Runtime deps only
# (no dev extra); requirements.lock pins the whole tree.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c requirements.lock \
    && rm /tmp/requirements.txt

COPY . .

# Static files are baked into the image (served by WhiteNoise). With DEBUG off the
# settings insist on SECRET_KEY and ALLOWED_HOSTS; these dummies exist only here.
RUN DEBUG=0 SECRET_KEY=collectstatic-build-only-not-secret ALLOWED_HOSTS=build \
    DATABASE_URL=postgres://build@localhost/build REDIS_URL=redis://localhost:6379/0 \
    python manage.py collectstatic --noinput

# Code stays root-owned (read-only for the app); the app runs unprivileged and
# may write only to media/ (a volume in docker-compose.yml).
RUN useradd --system --uid 10001 --create-home --home-dir /home/app app \
    && mkdir -p /app/media && chown app:app /app/media
USER app

EXPOSE 8000
# Threaded workers: a view waiting on Postgres or Stripe holds a thread, not a whole process.
# Processes from WEB_CONCURRENCY (2 x cores - 1: 3 on the 2 cores bench/load.py measured,
# where 3 x 4 threads served as many pages as 3 sync workers and more than 5).
ENV WEB_CONCURRENCY=3
CMD ["gunicorn", "billing_portal.wsgi:application", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--threads", "4", "--access-logfile", "-"]
