"""A scratch database for a benchmark: created from the migrations, dropped at exit.

Import it first, before Django models:  from scratch import scratch_database;
scratch_database("billing_bench_x")  — then import the apps' models.
"""

import atexit
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scratch_database(name: str, *, keep: bool = False) -> None:
    """Point Django at a fresh database `name` on the project-local Postgres and migrate it."""
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"
    parts = urlsplit(
        os.environ.get("DATABASE_URL", "postgres://portal@127.0.0.1:55432/billing_portal")
    )
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))

    import django
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    django.setup()

    from django.conf import settings
    from django.core.management import call_command

    # Production runs with DEBUG off; with it on, Django keeps every query in memory.
    settings.DEBUG = False
    call_command("migrate", verbosity=0)

    if not keep:

        def drop():
            from django.db import connections

            connections.close_all()
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

        atexit.register(drop)
