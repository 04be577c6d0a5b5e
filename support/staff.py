"""Django staff roles: read-only support staff see everything in admin and
change nothing; billing staff also run the money actions and answer tickets; account staff
run the access actions (SSO lockout recovery, GDPR reviews) and answer tickets. Superusers
can do everything. Groups are (re)made after every migrate, so new permissions reach them."""

from django.contrib.auth.models import Group, Permission
from django.db.models import Q

PROJECT_APPS = ("accounts", "subscriptions", "billing", "usage", "sso", "support", "retention")

READ_ONLY = "Support staff (read-only)"
BILLING = "Billing staff"
ACCOUNT = "Account staff"

MONEY_PERMISSIONS = (
    "billing.record_payment",
    "billing.write_off",
    "billing.issue_revised_copy",
    "billing.issue_credit_note",
    "billing.extend_grace",
    "billing.resolve_difference",
    "billing.adjust_balance",
    "billing.export_finance",
    "support.reply_ticket",
)
ACCESS_PERMISSIONS = (
    "sso.switch_off_enforcement",
    "retention.review_deletion_request",
    "support.reply_ticket",
)


def _permissions(names) -> list[Permission]:
    query = Q(pk__in=[])
    for name in names:
        app_label, codename = name.split(".")
        query |= Q(content_type__app_label=app_label, codename=codename)
    return list(Permission.objects.filter(query))


def staff_groups_ensure(**_kwargs) -> None:
    views = list(
        Permission.objects.filter(
            content_type__app_label__in=PROJECT_APPS, codename__startswith="view_"
        )
    )
    for name, extra in (
        (READ_ONLY, ()),
        (BILLING, MONEY_PERMISSIONS),
        (ACCOUNT, ACCESS_PERMISSIONS),
    ):
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set([*views, *_permissions(extra)])
