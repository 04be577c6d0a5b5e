"""Settings for the test suite: the real settings, with fast password hashing and isolated Redis."""

import os

os.environ.setdefault("DEBUG", "1")

from billing_portal.settings import *  # noqa: E402, F403
from billing_portal.settings import CACHES, REDIS_URL  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Tests share the real Redis server but never the development data in it.
# TEST_REDIS_DB lets two test runs on one machine keep their cache (rate limits) apart.
_TEST_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/" + os.environ.get("TEST_REDIS_DB", "15")
CACHES = {"default": {**CACHES["default"], "LOCATION": _TEST_REDIS_URL, "KEY_PREFIX": "test"}}
CELERY_BROKER_URL = _TEST_REDIS_URL
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
