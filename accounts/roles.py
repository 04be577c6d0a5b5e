"""Who may use which Settings page, written down in one place."""

from dataclasses import dataclass

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


# The Settings navigation, in the article's order. Views use the same role sets.
SETTINGS_SECTIONS = (
    SettingsSection("subscription", "Subscription", "subscriptions:settings", ADMIN_AND_BILLING),
    SettingsSection("billing", "Billing", "billing:settings", ADMIN_AND_BILLING),
    SettingsSection("users", "Users", "accounts:users", ADMIN_ONLY),
    SettingsSection("organisation", "Organisation", "accounts:organisation", ADMIN_ONLY),
    SettingsSection("sso", "SSO", "sso:settings", ADMIN_ONLY),
    SettingsSection("privacy", "Privacy", "retention:privacy", ADMIN_ONLY),
)


def sections_for(role: str) -> list[SettingsSection]:
    return [section for section in SETTINGS_SECTIONS if role in section.roles]


def section(key: str) -> SettingsSection:
    return next(s for s in SETTINGS_SECTIONS if s.key == key)
