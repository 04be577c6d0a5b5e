"""Pytest plugin for tests that talk to localstripe, the Stripe stand-in.

Loaded by tests/conftest.py (`pytest_plugins = ["tests.stripe_fixtures"]`) or with
`-p tests.stripe_fixtures`. The `localstripe` fixture empties localstripe before the test; its
value is a `stripe.StripeClient` for looking at what the code under test did
(`localstripe.v1.payment_intents.list(...)`). The test cards and the Stripe.js stand-ins
(`confirmed_setup_intent`, `confirm_card_setup`, webhooks) are in devkit/stripe_standin.py.
"""

from urllib.parse import urlsplit

import pytest
import stripe
from django.conf import settings

from devkit.stripe_standin import LOOPBACK, standin_client, standin_request


@pytest.fixture
def localstripe() -> stripe.StripeClient:
    """An empty localstripe, and a Stripe client to look into it."""
    base = settings.STRIPE_API_BASE
    if urlsplit(base).hostname not in LOOPBACK:
        pytest.fail(f"STRIPE_API_BASE is {base}: tests only run against localstripe on loopback")
    try:
        status, _ = standin_request("/_config/data", method="DELETE")
    except OSError as e:
        problem = (
            f"localstripe is not running at {base}; use make test "
            f"(or: bash scripts/services.sh start) [{e}]"
        )
    else:
        problem = (
            None if status == 200 else f"{base} is not localstripe? DELETE /_config/data: {status}"
        )
    if problem:
        pytest.fail(problem, pytrace=False)
    return standin_client()
