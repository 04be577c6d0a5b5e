"""Who may use which Settings page, written down in one place."""

from dataclasses import dataclass

from accounts import hooks
from accounts.models import Membership

ADMIN = Membership.Role.ADMIN
BILLING = Membership.Role.BILLING
MEMBER = Membership.Role.MEMBER

ALL_ROLES = frozenset({ADMIN, BILLING, MEMBER})
ADMIN_ONLY = frozenset({ADMIN})
ADMIN_AND_BILLING = frozenset({ADMIN, BILLING})


@dataclass(frozen=True)
class SettingsSection:
    key: str
    label: str
    url_name: str
    roles: frozenset
    # Place in the Settings navigation, which follows the article's order.
    order: int


# accounts' own Settings pages. The apps above add theirs (Subscription, Billing, SSO, Privacy)
# through accounts.hooks.settings_section_add; portal.frame does it for them.
ACCOUNTS_SECTIONS = (
    SettingsSection("users", "Users", "accounts:users", ADMIN_ONLY, order=30),
    SettingsSection("organisation", "Organisation", "accounts:organisation", ADMIN_ONLY, order=40),
)


def settings_sections() -> list[SettingsSection]:
    """Every Settings page, in the navigation's order. Views use the same role sets."""
    return sorted([*ACCOUNTS_SECTIONS, *hooks.settings_sections], key=lambda s: s.order)


def sections_for(role: str) -> list[SettingsSection]:
    return [section for section in settings_sections() if role in section.roles]
