"""Demo data for `make run` (manage.py seed_demo): four organisations, each showing a state of
the product, made through the services the views, the machine API and the scheduled jobs call.

Every date is derived from `now`; what happened in the past is made by calling the services
with an earlier `now`, as the scheduled jobs would have at that instant. Idempotent: each
organisation's story is told once (when it has no subscription yet); later runs only make sure
the login, the memberships and a card known to the Stripe stand-in exist.
See docs/architecture.md#decision-development-and-demo-contracts.
"""

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from allauth.account.models import EmailAddress
from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db import transaction

from accounts.audit import SYSTEM, Actor
from accounts.billing_recipients import billing_recipient_add
from accounts.models import Membership, Organisation, OutgoingEmail, User
from accounts.services import organisation_create
from billing import gateway
from billing.cards import card_setup_begin, card_setup_complete
from billing.checkout import subscription_checkout
from billing.collection import dunning_advance
from billing.credit_notes import credit_note_issue
from billing.documents import invoice_documents_render_pending
from billing.invoicing import billing_run_issue
from billing.models import BillingProfile, CreditNote, Invoice, PaymentMethod
from billing.payments import invoices_charge_due
from devkit.saml_idp import TestIdP
from devkit.stripe_standin import AUTH_ALWAYS, VISA, confirm_card_setup
from sso.configuration import configuration_for, idp_configure
from sso.domains import domain_add
from sso.models import SsoDomain
from subscriptions.cancellation import subscription_cancel
from subscriptions.models import CancellationReason, Plan, Subscription
from subscriptions.services import (
    connection_create,
    environment_create,
    process_flow_create,
    process_flow_pause,
)
from usage.models import ApiKey
from usage.months import usage_month_of
from usage.services import api_key_create, month_usage, sync_info_ingest

PASSWORD = "demo-pass-2026"  # noqa: S105 - published demo logins, development only
OPS_EMAIL = "ops@example.com"
IDP_USER = "admin@globex.example"
SSO_DOMAIN = "globex.example"


@dataclass(frozen=True)
class Story:
    name: str
    slug: str
    people: list  # (email, full name, role); the first is the owner
    plan: str
    cycle: str
    card: str = VISA


STORIES = [
    Story(
        "Acme Trading",
        "acme-trading",
        [
            ("admin@acme.example", "Ada Admin", Membership.Role.ADMIN),
            ("billing@acme.example", "Bill Ing", Membership.Role.BILLING),
            ("member@acme.example", "Mel Member", Membership.Role.MEMBER),
        ],
        "professional",
        "monthly",
    ),
    Story(
        "Globex",
        "globex",
        [(IDP_USER, "Gina Globex", Membership.Role.ADMIN)],
        "enterprise",
        "annual",
    ),
    Story(
        "Initech",
        "initech",
        [
            ("admin@initech.example", "Ian Initech", Membership.Role.ADMIN),
            ("billing@initech.example", "Bea Billing", Membership.Role.BILLING),
        ],
        "professional",
        "monthly",
        card=AUTH_ALWAYS,
    ),
    Story(
        "Umbrella",
        "umbrella",
        [("admin@umbrella.example", "Uma Umbrella", Membership.Role.ADMIN)],
        "standard",
        "monthly",
    ),
]

# Acme's usage: this usage month at USAGE_NOW of the plan's limit (the 80% alert has gone out),
# the usage month before over the limit by OVERAGE (billed on the renewal invoice), and a
# quieter BACKGROUND_PER_DAY before that, for SYNC_INFO_DAYS of Sync Info in all.
USAGE_NOW = 0.85
OVERAGE = 0.05
BACKGROUND_PER_DAY = 2_500
SYNC_INFO_DAYS = 60
FAILED_EVERY = 29  # about 3.5% of records fail, with a message
BATCH = 5_000  # usage.services.MAX_RECORDS
ACME_FLOWS = [
    # (environment, source app, target app, flow name, paused by the user)
    ("Production", "Shopify", "SAP Business One", "Orders to SAP", False),
    ("Production", "SAP Business One", "Shopify", "Stock levels to Shopify", False),
    ("Production", "Shopify", "SAP Business One", "Customers to SAP", False),
    ("Production", "SAP Business One", "Shopify", "Price lists to Shopify", True),
    ("Staging", "Shopify", "SAP Business One", "Orders to SAP (test)", True),
]
RECIPIENT = "accounts-payable@acme.example"


def demo_idp() -> TestIdP:
    """The local test IdP `make run` starts (scripts/run.sh passes its URL and key folder)."""
    run_dir = os.environ.get("RUN_DIR") or str(Path(settings.BASE_DIR) / ".run")
    return TestIdP.stored(
        base_url=os.environ.get("DEMO_IDP_URL", "http://127.0.0.1:58480"),
        key_dir=Path(os.environ.get("DEMO_IDP_KEY_DIR") or Path(run_dir) / "idp"),
    )


def seed(*, now: datetime) -> None:
    """Make (or complete) the demo data as of `now`."""
    organisations = {story.slug: _people(story, now=now) for story in STORIES}
    _user(OPS_EMAIL, "Olly Ops", staff=True)
    for story in STORIES:
        organisation = organisations[story.slug]
        if Subscription.objects.filter(organisation=organisation).exists():
            _card_known_to_stand_in(organisation, story.card, now=now)
        else:
            TELL[story.slug](organisation, story, now=now)
    _sso_for_globex(organisations["globex"], now=now)


def logins() -> list[tuple[str, str, str]]:
    """(organisation, role, email) of every demo login."""
    rows = [(s.name, role.label, email) for s in STORIES for email, _name, role in s.people]
    return [*rows, ("Ops staff", "Django admin", OPS_EMAIL)]


@contextlib.contextmanager
def _emails_dated(moment: datetime):
    """The emails written inside the block carry `moment`: the services take `now`, but an
    email is stamped when it is written, and the Notifications page of a story told in the
    past would otherwise show every message sent at seeding time."""
    before = OutgoingEmail.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    yield
    OutgoingEmail.objects.filter(pk__gt=before).update(created_at=moment)


# People and cards -----------------------------------------------------------------------------


def _user(email: str, full_name: str, *, staff: bool = False) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(
            email=email,
            password=PASSWORD,
            full_name=full_name,
            is_staff=staff,
            is_superuser=staff,
        )
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user


def _people(story: Story, *, now: datetime) -> Organisation:
    with transaction.atomic():
        owner_email, owner_name, _role = story.people[0]
        owner = _user(owner_email, owner_name)
        organisation = Organisation.objects.filter(slug=story.slug).first()
        if organisation is None:
            organisation = organisation_create(name=story.name, owner=owner, now=now)
            if organisation.slug != story.slug:
                organisation.slug = story.slug
                organisation.save(update_fields=["slug"])
        for email, full_name, role in story.people:
            Membership.objects.get_or_create(
                organisation=organisation,
                user=_user(email, full_name),
                defaults={"role": role, "created_at": now},
            )
    return organisation


def _card_known_to_stand_in(organisation: Organisation, number: str, *, now: datetime) -> None:
    """A card on file, re-created if the local Stripe stand-in was restarted: it keeps its
    data in memory, so the demo customer and card are gone there (the old card stays as
    history)."""
    profile = BillingProfile.objects.filter(organisation=organisation).first()
    if (
        profile
        and profile.stripe_customer_id
        and not gateway.customer_exists(customer_id=profile.stripe_customer_id)
    ):
        BillingProfile.objects.filter(pk=profile.pk).update(stripe_customer_id="")
        PaymentMethod.objects.filter(organisation=organisation, status="active").update(
            status=PaymentMethod.Status.REPLACED, replaced_at=now
        )
    if not PaymentMethod.objects.filter(organisation=organisation, status="active").exists():
        _new_card(organisation, number, now=now)


def _new_card(organisation: Organisation, number: str, *, now: datetime) -> PaymentMethod:
    """Update Card as the page does: Stripe.js confirms a SetupIntent (answering the bank's
    challenge when the card asks), then the view completes it."""
    client_secret = card_setup_begin(organisation=organisation)
    setup_intent_id = confirm_card_setup(client_secret, number=number)
    return card_setup_complete(
        organisation=organisation, actor=SYSTEM, setup_intent_id=setup_intent_id, now=now
    )


def _subscribe(
    organisation: Organisation, story: Story, *, start: datetime, card: str = ""
) -> Subscription:
    """A card, Billing Information and the checkout at `start`, paid with that card."""
    _card_replace(organisation, card or story.card, now=start)
    BillingProfile.objects.filter(organisation=organisation).update(
        company_name=f"{organisation.name} Ltd",
        address_line1="1 Market Street",
        city="Dublin",
        postal_code="D01 F5P2",
        country="IE",
    )
    with _emails_dated(start):
        subscription_checkout(
            organisation=organisation,
            actor=SYSTEM,
            plan=Plan.objects.get(code=story.plan),
            billing_cycle=story.cycle,
            currency="USD",
            now=start,
        )
    _invoices_rendered(start + timedelta(minutes=1))
    return Subscription.objects.get(organisation=organisation)


def _renew_until(subscription: Subscription, moment: datetime, before_renewal=None) -> None:
    """Each renewal up to `moment`, as the scheduled billing run and charges would have done;
    `before_renewal(period_start, period_end)` runs first (the usage of the closing period)."""
    while subscription.current_period_end <= moment:
        end = subscription.current_period_end
        if before_renewal:
            before_renewal(subscription.current_period_start, end)
        with _emails_dated(end):
            billing_run_issue(now=end)
        _invoices_rendered(end)
        charged = end + timedelta(minutes=1)
        with _emails_dated(charged):
            invoices_charge_due(now=charged)
        subscription.refresh_from_db()


def _invoices_rendered(moment: datetime) -> None:
    """Render the new invoices' PDFs as the worker would right after issue, so their "Invoice
    from" emails carry the moment of the story, not of seeding."""
    with _emails_dated(moment):
        invoice_documents_render_pending(now=moment)


# The stories ----------------------------------------------------------------------------------


def _story_acme_trading(organisation: Organisation, story: Story, *, now: datetime) -> None:
    """Four months of history: flows (two paused by the user), 60 days of Sync Info through the
    machine API's ingest, last usage month over the limit (one overage on the renewal
    invoice), this month at about 85% with the 80% alert sent, a credit note to the customer
    balance, and an extra billing recipient."""
    # Started 22 days past a month boundary, so this usage month is 22 days old whatever the
    # date: 85% with a week left is the moment the alert and the forecast are about.
    start = now - relativedelta(months=4, days=22)
    subscription = _subscribe(organisation, story, start=start)
    admin = Actor(user=User.objects.get(email=story.people[0][0]))
    flows, paused, key = _acme_flows(organisation, admin, at=start + timedelta(hours=1))
    limit = subscription.plan.monthly_transactions
    first_record = now - timedelta(days=SYNC_INFO_DAYS)

    def usage_of_period(period_start: datetime, period_end: datetime) -> None:
        begin = max(period_start, first_record)
        if begin >= period_end:
            return
        if usage_month_of(subscription, now)[0] == period_end:  # the last usage month
            total = round(limit * (1 + OVERAGE))
        else:
            days = (period_end - begin) / timedelta(days=1)
            total = round(BACKGROUND_PER_DAY * days)
        _ingest(key, flows, begin=begin, end=period_end, total=total, sent_at=period_end)

    _renew_until(subscription, now, before_renewal=usage_of_period)
    month_start, _month_end = usage_month_of(subscription, now)
    _ingest(
        key,
        flows,
        begin=max(month_start, first_record),
        end=now,
        total=round(limit * USAGE_NOW),
        sent_at=now,
    )
    for flow in paused:
        process_flow_pause(organisation=organisation, actor=admin, now=now, flow=flow)
    _acme_credit_note(organisation, now=now)
    billing_recipient_add(organisation=organisation, actor=admin, email=RECIPIENT, now=now)


def _acme_flows(organisation, admin, *, at):
    environments, connections, flows, paused = {}, {}, [], []
    for env_name, source, target, flow_name, is_paused in ACME_FLOWS:
        if env_name not in environments:
            environments[env_name] = environment_create(
                organisation=organisation, actor=admin, now=at, name=env_name
            )
        environment = environments[env_name]
        for application in (source, target):
            if (env_name, application) not in connections:
                connections[env_name, application] = connection_create(
                    organisation=organisation,
                    actor=admin,
                    now=at,
                    name=f"{application} ({env_name})",
                    application=application,
                    environment=environment,
                )
        flow = process_flow_create(
            organisation=organisation,
            actor=admin,
            now=at,
            name=flow_name,
            environment=environment,
            source=connections[env_name, source],
            target=connections[env_name, target],
        )
        if env_name == "Production":
            flows.append(flow)
        if is_paused:
            paused.append(flow)
    key, _plain = api_key_create(
        environment=environments["Production"], actor=admin, name="Runtime on sap-prod-01", now=at
    )
    return flows, paused, key


def _ingest(key: ApiKey, flows, *, begin: datetime, end: datetime, total: int, sent_at) -> None:
    """`total` records spread evenly over [begin, end), posted as the runtime does: batches
    to the machine API's ingest, each sent when its last record was synced (the last ones at
    `sent_at`). Idempotency keys come from the records' times, like a runtime's."""
    if total <= 0:
        return
    step = (end - begin) / total
    for first in range(0, total, BATCH):
        records, last = [], begin
        for index in range(first, min(first + BATCH, total)):
            last = begin + step * index
            flow = flows[index % len(flows)]
            failed = index % FAILED_EVERY == 0
            records.append(
                {
                    "flow_id": str(flow.public_id),
                    "record_key": f"{flow.name.split()[0].upper()}-{index + 1:07d}",
                    "status": "failed" if failed else "success",
                    "direction": "outbound" if index % 3 else "inbound",
                    "synced_at": last.astimezone(UTC).isoformat(),
                    "message": "SAP B1: the item code does not exist (ODBC -2028)"
                    if failed
                    else "",
                }
            )
        received = min(last + timedelta(minutes=1), sent_at)
        with _emails_dated(received):
            result = sync_info_ingest(
                key=key,
                idempotency_key=f"demo-{begin:%Y%m%dT%H%M%S}-{first}",
                body=json.dumps({"records": records}).encode(),
                now=received,
            )
        if result.status_code != 201:
            raise RuntimeError(f"The demo batch was refused: {result.body}")


def _acme_credit_note(organisation: Organisation, *, now: datetime) -> None:
    """Ops credit $50 of an early invoice to the customer balance, for a service issue."""
    invoice = (
        Invoice.objects.filter(organisation=organisation, status=Invoice.Status.PAID)
        .order_by("issued_at")
        .first()
    )
    ops = User.objects.get(email=OPS_EMAIL)
    credit_note_issue(
        invoice=invoice,
        actor=Actor(user=ops),
        reason=CreditNote.Reason.SERVICE_ISSUE,
        outcome=CreditNote.Outcome.BALANCE,
        note="Sync delays on 3 days of the first month.",
        amount=5_000,
        now=now,
    )


def _story_globex(organisation: Organisation, story: Story, *, now: datetime) -> None:
    """Enterprise annual, paid for a month so far (SSO: see _sso_for_globex)."""
    subscription = _subscribe(organisation, story, start=now - relativedelta(months=1))
    _renew_until(subscription, now)


def _story_initech(organisation: Organisation, story: Story, *, now: datetime) -> None:
    """A renewal three days ago that the bank wants confirmed (3-D Secure on every charge):
    past due, on Day 3 of the failed-payment schedule, and "Confirm payment" for its Admin.
    The card asked already when it was saved (checkout), as the help article describes."""
    renewal = now - timedelta(days=3, hours=1)
    start = renewal - relativedelta(months=1)
    # Initech's first month was paid with a card that did not ask; the card that asks came
    # with Update Card a week later.
    subscription = _subscribe(organisation, story, start=start, card=VISA)
    _card_replace(organisation, story.card, now=start + timedelta(days=7))
    _renew_until(subscription, renewal)
    # Day 3 of the case opened by the renewal's charge (a minute after the renewal).
    day_3 = renewal + timedelta(days=3, minutes=5)
    with _emails_dated(day_3):
        dunning_advance(now=day_3)


def _card_replace(organisation: Organisation, number: str, *, now: datetime) -> None:
    active = PaymentMethod.objects.filter(organisation=organisation, status="active").first()
    if active is None or active.last4 != number[-4:]:
        _new_card(organisation, number, now=now)


def _story_umbrella(organisation: Organisation, story: Story, *, now: datetime) -> None:
    """Standard monthly, cancelled yesterday: service until the period ends, then its data is
    kept 30 days (the deletion countdown)."""
    subscription = _subscribe(organisation, story, start=now - timedelta(days=12))
    with _emails_dated(now - timedelta(days=1)):
        subscription_cancel(
            subscription=subscription,
            actor=Actor(user=User.objects.get(email=story.people[0][0])),
            reason=CancellationReason.PROJECT_ENDED,
            detail="",
            now=now - timedelta(days=1),
        )


def _sso_for_globex(organisation: Organisation, *, now: datetime) -> None:
    """Globex signs in with SSO through the local test IdP: its metadata saved and the domain
    routed to it. Saved again only when the IdP changed (another port or a new key pair), so
    a second run changes nothing."""
    idp = demo_idp()
    config = configuration_for(organisation)
    saved = {_bare(cert["pem"]) for cert in config.idp_certificates}
    if config.idp_entity_id != idp.entity_id or _bare(idp.cert_pem) not in saved:
        admin = Actor(user=User.objects.get(email=IDP_USER))
        idp_configure(
            organisation=organisation,
            actor=admin,
            idp_type="custom",
            metadata_url="",
            metadata_xml=idp.metadata(),
            now=now,
        )
    if not SsoDomain.objects.filter(organisation=organisation, domain=SSO_DOMAIN).exists():
        domain_add(
            organisation=organisation,
            actor=Actor(user=User.objects.get(email=IDP_USER)),
            domain=SSO_DOMAIN,
            now=now,
        )


def _bare(pem: str) -> str:
    """A certificate's base64 body, however it is wrapped (PEM lines or one string)."""
    return "".join(word for word in pem.split() if "-----" not in word and word != "CERTIFICATE")


TELL = {
    "acme-trading": _story_acme_trading,
    "globex": _story_globex,
    "initech": _story_initech,
    "umbrella": _story_umbrella,
}


def usage_share(organisation: Organisation, *, now: datetime) -> float:
    """This usage month's usage as a share of the plan's limit (for the seed's summary)."""
    subscription = Subscription.objects.select_related("plan").get(organisation=organisation)
    month_start, _end = usage_month_of(subscription, now)
    used = month_usage(organisation=organisation, month_start=month_start)
    return used / subscription.plan.monthly_transactions
