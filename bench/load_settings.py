"""Settings for bench/load.py only: the production settings, plus the floor view's URL.

Production code gets no bench URL: gunicorn serves the bench with
DJANGO_SETTINGS_MODULE=bench.load_settings, whose URLconf (bench/load_urls.py) adds one trivial
view in front of the portal's own URLs. Everything else is billing_portal.settings as the
environment makes it (DEBUG off, secure cookies, HSTS, SSL redirect with X-Forwarded-Proto).
"""

import os

from billing_portal.settings import *  # noqa: F403
from billing_portal.settings import CACHES, TRUSTED_PROXY_COUNT

ROOT_URLCONF = "bench.load_urls"

# collectstatic writes here (a temporary directory of the run), not into the checkout.
STATIC_ROOT = os.environ["LOAD_STATIC_ROOT"]

# Behind a proxy every request comes from the proxy's address; allauth reads its own setting
# for the address its sign-in limits ("login": 30/m/ip) count by. Without it the 50 users, all
# from the proxy's address, would hit that limit and the bench would measure the limit, not
# the pages. (The production settings may set the same; said again so the bench never depends
# on it.)
ALLAUTH_TRUSTED_PROXY_COUNT = TRUSTED_PROXY_COUNT

# The run's own cache keys (rate-limit counters) in the shared Redis.
CACHES = {"default": {**CACHES["default"], "KEY_PREFIX": os.environ["LOAD_CACHE_PREFIX"]}}
