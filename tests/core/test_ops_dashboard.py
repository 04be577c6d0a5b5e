"""The ops dashboard on the Django admin index: right figures, links to the filtered lists, and
a constant number of queries whatever the number of organisations."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import Dispute, Invoice, LedgerViolation, Payment
from core.money import format_money
from portal.dashboard import ops_dashboard
from support.models import SupportTicket
from tests.accounts.factories import OrganisationFactory, UserFactory
from tests.billing.factories import issued_invoice
from tests.subscriptions.factories import SubscriptionFactory
from tests.support.factories import SupportTicketFactory
from usage.models import UsageAlert

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def ops(db):
    return UserFactory(email="ops@portal.test", is_staff=True, is_superuser=True)


def populate(n: int, offset: int = 0):
    """n organisations with a spread of states, each with an invoice, a payment, an alert and a
    ticket, created in bulk-ish."""
    statuses = ["active", "past_due", "grace", "suspended", "ended"]
    for i in range(offset, offset + n):
        org = OrganisationFactory(slug=f"org-{i}")
        status = statuses[i % len(statuses)]
        SubscriptionFactory(organisation=org, status=status)
        invoice = issued_invoice(
            organisation=org, number=f"INV-2026-{i + 1:06d}", issued_at=NOW - timedelta(days=1)
        )
        # Paid, or waiting for the customer's bank (3-D Secure).
        payment_status = {"active": "succeeded", "past_due": "requires_action"}.get(status)
        if payment_status:
            payment = Payment.objects.create(
                organisation=org,
                invoice=invoice,
                method_kind="card",
                attempt=1,
                amount=invoice.total,
                currency=invoice.currency,
                status=payment_status,
                idempotency_key=f"pay-{i}",
                created_at=NOW - timedelta(hours=1),
            )
            if payment_status == "succeeded":
                # Its cardholder disputed the payment: open, or won by the second one.
                dispute(payment, status="won" if i % 10 == 5 else "needs_response", n=i)
        if i % 3 == 0:
            UsageAlert.objects.create(
                organisation=org,
                month_start=NOW - timedelta(days=5),
                month_end=NOW + timedelta(days=25),
                threshold=80,
                transactions=8000,
            )
        SupportTicketFactory(
            organisation=org,
            category="account_suspended" if i % 2 else "billing",
            urgent=bool(i % 2),
            contact_email="a@b.test",
        )


def dispute(payment: Payment, *, status: str, n: int) -> Dispute:
    return Dispute.objects.create(
        processor_id=f"dp_{n}",
        organisation_id=payment.organisation_id,
        payment=payment,
        invoice_id=payment.invoice_id,
        amount=payment.amount,
        currency=payment.currency,
        reason="fraudulent",
        status=status,
        opened_at=NOW - timedelta(minutes=30),
        event_created=NOW - timedelta(minutes=30),
    )


def populate_bulk(n: int, offset: int):
    """Many more organisations, cheaply (bulk inserts), in every state."""
    from accounts.models import Organisation
    from subscriptions.models import Subscription

    statuses = ["active", "past_due", "grace", "suspended", "ended"]
    orgs = Organisation.objects.bulk_create(
        [OrganisationFactory.build(slug=f"bulk-{i}") for i in range(offset, offset + n)]
    )
    Subscription.objects.bulk_create(
        [
            SubscriptionFactory.build(organisation=org, status=statuses[i % 5])
            for i, org in enumerate(orgs)
        ]
    )
    UsageAlert.objects.bulk_create(
        [
            UsageAlert(
                organisation=org,
                month_start=NOW - timedelta(days=5),
                month_end=NOW + timedelta(days=25),
                threshold=80,
                transactions=1,
            )
            for org in orgs[::3]
        ]
    )
    # More disputes, all of one payment (the figure does not look at organisations).
    payment = Payment.objects.filter(status="succeeded").first()
    Dispute.objects.bulk_create(
        [
            Dispute(
                processor_id=f"dp_bulk_{i}",
                organisation_id=payment.organisation_id,
                payment=payment,
                invoice_id=payment.invoice_id,
                amount=100,
                currency="USD",
                status="under_review",
                opened_at=NOW,
                event_created=NOW,
            )
            for i in range(offset, offset + n, 5)
        ]
    )
    SupportTicket.objects.bulk_create(
        [
            SupportTicket(
                organisation=org,
                category="billing",
                urgent=True,
                subject="x",
                contact_email="a@b.test",
                organisation_name=org.name,
            )
            for org in orgs[::2]
        ]
    )


def test_figures(db):
    populate(10)
    # Last month's alert does not count.
    old = OrganisationFactory(slug="old")
    UsageAlert.objects.create(
        organisation=old,
        month_start=NOW - timedelta(days=40),
        month_end=NOW - timedelta(days=10),
        threshold=100,
        transactions=1,
    )
    dashboard = ops_dashboard(now=NOW)
    statuses = {figure.label: figure.value for figure in dashboard["statuses"]}
    assert statuses["Active"] == "2"
    assert statuses["Suspended"] == "2"
    past_due, suspended, waiting = dashboard["at_risk"]
    assert past_due.value == "4"  # past due and grace
    assert suspended.value == "2"
    # The two past due ones wait for the customer's bank (3-D Secure).
    assert (waiting.value, waiting.detail) == ("2", "in 2 organisation(s)")
    assert waiting.url.endswith("?status__exact=requires_action")
    # Four open invoices (past due and grace), added up in their currency.
    per_invoice = Invoice.objects.filter(organisation__slug="org-1").get().total
    assert past_due.detail == f"{format_money(4 * per_invoice, 'EUR')} open"
    issued, collected = dashboard["month"]
    assert issued.value == "10"
    assert collected.value == "2 payments"
    assert dashboard["usage"].value == "4"  # orgs 0, 3, 6, 9
    assert dashboard["support"].value == "5"
    assert dashboard["support"].url.endswith("?state=open_urgent")
    violations, differences = dashboard["checks"]
    assert (violations.value, differences.value) == ("0", "0")
    LedgerViolation.objects.create(
        rule="status",
        organisation=old,
        subject="subscription:1",
        message="x",
        first_seen_at=NOW,
        last_seen_at=NOW,
    )
    LedgerViolation.objects.create(
        rule="status",
        organisation=old,
        subject="subscription:2",
        message="x",
        first_seen_at=NOW,
        last_seen_at=NOW,
        resolved_at=NOW,
    )
    violations, _ = ops_dashboard(now=NOW)["checks"]
    assert (violations.value, violations.detail) == ("1", "in 1 organisation(s)")
    # Orgs 0 and 5 paid; 0's payment is disputed, 5's dispute was won.
    disputes, refunds = dashboard["money_back"]
    per_payment = Payment.objects.get(organisation__slug="org-0").amount
    assert (disputes.value, disputes.detail) == (
        "1",
        f"{format_money(per_payment, 'EUR')} disputed",
    )
    assert disputes.url.endswith("/admin/billing/dispute/?state=open")
    assert (refunds.value, refunds.detail) == ("0", "nothing waiting for Stripe")


def test_admin_index_shows_the_dashboard_with_working_links(client_for, ops):
    populate(5)
    client = client_for(ops)
    page = client.get("/admin/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Ops dashboard" in body
    assert "Open urgent tickets" in body
    dashboard = page.context["dashboard"]
    figures = [
        *dashboard["checks"],
        *dashboard["statuses"],
        *dashboard["at_risk"],
        *dashboard["month"],
        *dashboard["money_back"],  # open disputes, refunds pending
        dashboard["usage"],
        dashboard["support"],
    ]
    for figure in figures:
        assert f'href="{figure.url.replace("&", "&amp;")}"' in body
        response = client.get(figure.url)
        assert response.status_code == 200, figure.url
        assert "?e=1" not in response.get("Location", ""), figure.url  # not an invalid lookup


def test_query_count_is_constant_with_10_and_1000_organisations(client_for, ops):
    client = client_for(ops)
    populate(10)
    client.get("/admin/")
    with CaptureQueriesContext(connection) as few:
        client.get("/admin/")
    populate_bulk(990, offset=10)
    with CaptureQueriesContext(connection) as many:
        client.get("/admin/")
    assert len(many) == len(few)
