"""Plain helpers for tests of every app (fixtures stay in tests/conftest.py)."""

import json

from tests.accounts.factories import MembershipFactory, UserFactory

# The product's own packages (not tests, bench, devkit or scripts): what source checks read.
PRODUCT_APPS = (
    "accounts",
    "billing",
    "billing_portal",
    "core",
    "portal",
    "retention",
    "sso",
    "subscriptions",
    "support",
    "usage",
)


def user_with_role(organisation, role, email):
    """A new user with `email`, an active member of `organisation` with `role`."""
    return MembershipFactory(
        organisation=organisation, role=role, user=UserFactory(email=email)
    ).user


def sync_info_post(client, plain: str, records: list[dict], *, key: str, **extra):
    """POST a batch of Sync Info `records` to the machine API with API key `plain` and
    Idempotency-Key `key` (`extra`: more request headers, Django's test-client spelling)."""
    return client.post(
        "/api/v1/sync-info",
        data=json.dumps({"records": records}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plain}",
        HTTP_IDEMPOTENCY_KEY=key,
        **extra,
    )
