"""seed_demo: each demo organisation's state, on the models and on the page its people see;
idempotency; the refusal with DEBUG off; the cards after a restart of the Stripe stand-in.

Seeding takes about half a minute, so the module seeds once, in a transaction rolled back
after the module (each test runs in a savepoint inside it, as pytest-django nests them). The
clock stands still at NOW, a moment derived from the machine's date but placed just after a
usage month starts (the hardest case for "about 85% of the limit").
"""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import override_settings

from accounts.models import Membership, Organisation, OutgoingEmail, User
from billing.models import (
    BalanceEntry,
    CreditNote,
    DunningCase,
    DunningStep,
    Invoice,
    OverageCharge,
    PaymentMethod,
)
from devkit.stripe_standin import standin_request
from portal import demo
from sso.configuration import configuration_for
from sso.models import SsoDomain
from subscriptions.models import ProcessFlow, Subscription
from usage.models import IngestBatch, UsageAlert, UsageCounter
from usage.months import usage_month_of
from usage.services import month_usage

pytestmark = pytest.mark.django_db

# A fixed instant: the first minutes of a calendar month, after a short February.
NOW = datetime(2027, 3, 1, 0, 5, tzinfo=UTC)


def counts():
    return {
        "organisations": Organisation.objects.count(),
        "users": User.objects.count(),
        "memberships": Membership.objects.count(),
        "invoices": Invoice.objects.count(),
        "usage": sum(UsageCounter.objects.values_list("transactions", flat=True)),
        "batches": IngestBatch.objects.count(),
        "emails": OutgoingEmail.objects.count(),
        "credit_notes": CreditNote.objects.count(),
        "active_cards": PaymentMethod.objects.filter(status="active").count(),
        "dunning_steps": DunningStep.objects.count(),
    }


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker, tmp_path_factory):
    idp_dir = tmp_path_factory.mktemp("idp")
    environment = {"DEMO_IDP_URL": "http://127.0.0.1:58499", "DEMO_IDP_KEY_DIR": str(idp_dir)}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    with (
        django_db_blocker.unblock(),
        override_settings(DEBUG=True),
        time_machine.travel(NOW, tick=False),
    ):
        standin_request("/_config/data", method="DELETE")
        with transaction.atomic():
            out = StringIO()
            call_command("seed_demo", stdout=out)
            yield {"output": out.getvalue(), "counts": counts()}
            transaction.set_rollback(True)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def still(seeded, time_machine):
    time_machine.move_to(NOW, tick=False)
    return seeded


def page(client, email, path):
    client.force_login(User.objects.get(email=email))
    response = client.get(path, follow=True)
    assert response.status_code == 200, path
    return response.content.decode()


def test_the_logins_and_their_roles(still):
    roles = dict(Membership.objects.values_list("user__email", "role"))
    assert roles == {
        "admin@acme.example": "admin",
        "billing@acme.example": "billing",
        "member@acme.example": "member",
        "admin@globex.example": "admin",
        "admin@initech.example": "admin",
        "billing@initech.example": "billing",
        "admin@umbrella.example": "admin",
    }
    assert User.objects.get(email="admin@initech.example").check_password("demo-pass-2026")
    ops = User.objects.get(email="ops@example.com")
    assert ops.is_staff
    assert not ops.memberships.exists()
    for email in roles:
        assert email in still["output"]
    assert "demo-pass-2026" in still["output"]


def test_demo_admin_can_sign_in(still, client):
    response = client.post(
        "/accounts/login/", {"login": "admin@acme.example", "password": "demo-pass-2026"}
    )
    assert response.status_code == 302
    assert client.get("/", follow=True).redirect_chain[-1][0] == "/o/acme-trading/"


def test_acme_uses_about_85_percent_and_got_the_80_percent_alert(still, client):
    acme = Organisation.objects.get(slug="acme-trading")
    subscription = Subscription.objects.select_related("plan").get(organisation=acme)
    month_start, _end = usage_month_of(subscription, NOW)
    used = month_usage(organisation=acme, month_start=month_start)
    assert used == round(subscription.plan.monthly_transactions * 0.85) == 212_500
    assert month_start < NOW
    this_month = UsageAlert.objects.filter(organisation=acme, month_start=month_start)
    assert list(this_month.values_list("threshold", flat=True)) == [80]
    assert "85%" in page(client, "admin@acme.example", "/o/acme-trading/settings/subscription/")
    notifications = page(client, "admin@acme.example", "/o/acme-trading/notifications/")
    assert "80%" in notifications


def test_acme_history_flows_overage_credit_note_and_recipient(still, client):
    acme = Organisation.objects.get(slug="acme-trading")
    flows = dict(ProcessFlow.objects.filter(organisation=acme).values_list("name", "status"))
    assert flows["Orders to SAP"] == "active"
    assert flows["Price lists to Shopify"] == "paused"
    assert sorted(flows.values()).count("paused") == 2
    assert ProcessFlow.objects.filter(organisation=acme, pause_reason="user").count() == 2
    # 60 days of Sync Info, successes and failures, through the machine API's ingest.
    days = UsageCounter.objects.filter(organisation=acme).values_list("day", flat=True)
    assert (max(days) - min(days)).days == 60
    statuses = page(client, "member@acme.example", "/o/acme-trading/sync-info/?status=failed")
    assert "ODBC -2028" in statuses
    # One usage month over the limit, billed once, on its renewal invoice.
    assert OverageCharge.objects.filter(organisation=acme).count() == 1
    assert Invoice.objects.filter(organisation=acme, status="paid").count() == 5
    note = CreditNote.objects.get(invoice__organisation=acme)
    assert (note.total, note.outcome) == (5_000, "balance")
    assert BalanceEntry.objects.filter(organisation=acme).count() == 1
    recipients = page(client, "admin@acme.example", "/o/acme-trading/settings/billing/recipients/")
    assert demo.RECIPIENT in recipients


def test_globex_sso_start_goes_to_the_local_test_idp(still, client):
    globex = Organisation.objects.get(slug="globex")
    assert Subscription.objects.get(organisation=globex).billing_cycle == "annual"
    assert SsoDomain.objects.filter(organisation=globex, domain="globex.example").exists()
    response = client.get("/sso/globex/login/")
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert (location.netloc, location.path) == ("127.0.0.1:58499", "/sso")
    # The key pair is kept: the IdP started again signs with what the configuration holds.
    again = "".join(demo.demo_idp().cert_pem.strip().splitlines()[1:-1])
    saved = configuration_for(globex).idp_certificates
    assert [certificate["pem"] for certificate in saved] == [again]


def test_initech_is_on_day_3_with_confirm_payment(still, client):
    initech = Organisation.objects.get(slug="initech")
    assert Subscription.objects.get(organisation=initech).status == "past_due"
    case = DunningCase.objects.get(organisation=initech, status="open")
    assert list(case.steps.order_by("ran_at").values_list("step", flat=True)) == [
        "day_0",
        "day_3",
    ]
    card = PaymentMethod.objects.get(organisation=initech, status="active")
    assert card.last4 == "3184"
    billing = page(client, "admin@initech.example", "/o/initech/settings/billing/payment-method/")
    assert "Day 3" in billing
    assert "Confirm payment" in billing


def test_umbrella_shows_its_deletion_countdown(still, client):
    umbrella = Organisation.objects.get(slug="umbrella")
    subscription = Subscription.objects.get(organisation=umbrella)
    assert subscription.cancel_at_period_end
    assert subscription.status == "active"
    text = page(client, "admin@umbrella.example", "/o/umbrella/settings/subscription/")
    assert 'class="deletion-countdown"' in text
    assert "deleted on" in text


def test_seed_again_changes_nothing(still):
    call_command("seed_demo", stdout=StringIO())
    assert counts() == still["counts"]


def test_seed_again_after_the_stripe_stand_in_forgot_everything(still):
    standin_request("/_config/data", method="DELETE")  # as a restarted localstripe
    call_command("seed_demo", stdout=StringIO())
    for slug, last4 in [("acme-trading", "4242"), ("initech", "3184")]:
        cards = PaymentMethod.objects.filter(organisation__slug=slug)
        assert cards.filter(status="active").get().last4 == last4
        assert cards.filter(status="replaced").count() >= 1
    assert Invoice.objects.count() == still["counts"]["invoices"]


def test_seed_demo_refuses_with_debug_off(settings):
    settings.DEBUG = False
    before = counts()
    with pytest.raises(CommandError, match="runs only with DEBUG on"):
        call_command("seed_demo")
    assert counts() == before


def test_seed_demo_refuses_with_debug_off_in_one_line():
    """As a developer sees it: one line on stderr, a non-zero exit, no traceback."""
    result = subprocess.run(
        [sys.executable, "manage.py", "seed_demo"],
        cwd=Path(__file__).resolve().parents[2],
        env={
            **os.environ,
            "DEBUG": "0",
            "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
            "SECRET_KEY": "x" * 50,
            "ALLOWED_HOSTS": "localhost",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "CommandError: seed_demo creates known passwords and runs only with DEBUG on."
    ]


def test_the_stories_emails_carry_the_moment_they_tell(still):
    """The Notifications page reads like the story: each invoice's email at its issue, each
    receipt after it, the alerts when usage crossed, not everything at the moment of seeding."""
    acme = Organisation.objects.get(slug="acme-trading")
    invoices = list(Invoice.objects.filter(organisation=acme).order_by("issued_at"))
    assert len(invoices) >= 4
    for invoice in invoices:
        issued = OutgoingEmail.objects.filter(
            organisation=acme, template="invoice_issued", subject__contains=invoice.number
        ).values_list("created_at", flat=True)
        receipts = OutgoingEmail.objects.filter(
            organisation=acme, template="payment_receipt", subject__contains=invoice.number
        ).values_list("created_at", flat=True)
        assert issued, invoice.number
        assert receipts, invoice.number
        assert {moment.date() for moment in issued} == {invoice.issued_at.date()}
        assert max(issued) < NOW
        assert max(receipts) < NOW
    alerts = OutgoingEmail.objects.filter(organisation=acme, template="usage_alert")
    assert alerts.count() >= 3  # 80% and 100% last month, 80% this month (two recipients each)
    assert all(moment < NOW for moment in alerts.values_list("created_at", flat=True))
    initech = Organisation.objects.get(slug="initech")
    day_3 = OutgoingEmail.objects.filter(organisation=initech).latest("created_at").created_at
    assert NOW - day_3 < timedelta(hours=1)
