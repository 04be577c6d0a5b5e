"""Plain helpers for tests of every app (fixtures stay in tests/conftest.py)."""

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
