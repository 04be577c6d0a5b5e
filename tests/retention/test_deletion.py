"""The organisation's data deleted 30 days after its subscription ended, the reminders before
it, and the notice on sign-in (article section 8;
docs/architecture.md#decision-cancellation-ends-at-period-end-and-can-be-undone)."""

from datetime import UTC, datetime, timedelta

import pytest
from dateutil.relativedelta import relativedelta
from django.apps import apps
from django.db import connection
from django.urls import reverse

from accounts.models import (
    AuditEvent,
    BillingRecipient,
    Membership,
    Organisation,
    OutgoingEmail,
    PrimaryEmailChange,
)
from billing.models import (
    BalanceEntry,
    BillingProfile,
    DunningCase,
    DunningStep,
    Invoice,
    InvoiceDocument,
    OverageCharge,
    Payment,
    PaymentMethod,
)
from core.errors import ServiceError
from core.jobs import get_job, run_job
from retention.deletion import organisation_data_delete
from retention.models import DeletionRecord
from sso.models import SsoAttempt, SsoConfiguration, SsoDomain, SsoRequest
from subscriptions.models import PlanChange, ProcessFlow, Subscription
from tests.accounts.factories import InvitationFactory, MembershipFactory, UserFactory
from tests.billing.factories import issued_invoice
from tests.subscriptions.factories import (
    ConnectionFactory,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
    plan,
)
from tests.support.factories import TicketAttachmentFactory
from usage.models import (
    AlertSettings,
    AlertThreshold,
    ApiKey,
    IngestBatch,
    UsageAlert,
    UsageCounter,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ENDED_AT = datetime(2026, 12, 1, 9, 5, tzinfo=UTC)
DELETION_AT = ENDED_AT + timedelta(days=30)  # 31 December 2026, 09:05 UTC


def _fill(organisation, *, status=Subscription.Status.ENDED, ended_at=ENDED_AT, tag="a"):
    """One of every kind of row an organisation owns."""
    subscription = SubscriptionFactory(
        organisation=organisation,
        status=status,
        ended_at=ended_at if status == Subscription.Status.ENDED else None,
    )
    env = EnvironmentFactory(organisation=organisation, name="Production")
    source = ConnectionFactory(environment=env, config={"url": "https://erp.test"})
    target = ConnectionFactory(environment=env)
    flow = ProcessFlowFactory(environment=env, source=source, target=target)
    ProcessFlowFactory(environment=env, paused="cancelled")
    ApiKey.objects.create(
        organisation=organisation, environment=env, name="Runtime", prefix="ak_", key_hash=tag * 64
    )
    IngestBatch.objects.create(
        organisation=organisation,
        environment=env,
        idempotency_key="batch-1",
        body_sha256="0" * 64,
        status_code=202,
        response={"accepted": 3},
        record_count=3,
    )
    UsageCounter.objects.create(
        organisation=organisation, month_start=ENDED_AT, day=ENDED_AT.date(), transactions=3
    )
    UsageAlert.objects.create(
        organisation=organisation,
        month_start=ENDED_AT,
        month_end=ENDED_AT + relativedelta(months=1),
        threshold=80,
        transactions=3,
    )
    AlertThreshold.objects.create(organisation=organisation, percent=50)
    AlertSettings.objects.create(organisation=organisation, forecast=True)
    InvitationFactory(organisation=organisation)
    PrimaryEmailChange.objects.create(
        organisation=organisation,
        old_email=organisation.primary_email,
        new_email=f"new-{tag}@company.test",
        token_hash=tag * 63 + "p",
        expires_at=ENDED_AT,
    )
    AuditEvent.objects.create(organisation=organisation, action="subscription.ended")
    # A confirmed billing recipient: it gets the billing emails, never the account's.
    BillingRecipient.objects.create(
        organisation=organisation,
        email=f"ap-{tag}@company.test",
        token_hash=tag * 63 + "r",
        expires_at=ENDED_AT,
        confirmed_at=ENDED_AT - timedelta(days=60),
    )
    OutgoingEmail.objects.create(
        organisation=organisation, to_email="x@company.test", template="t", subject="s"
    )
    BillingProfile.objects.create(organisation=organisation, company_name="Acme GmbH")
    SsoConfiguration.objects.create(organisation=organisation, idp_entity_id=f"https://idp-{tag}")
    SsoDomain.objects.create(organisation=organisation, domain=f"{tag}.{organisation.slug}.test")
    SsoAttempt.objects.create(organisation=organisation, mode="sign_in", outcome="failure")
    SsoRequest.objects.create(
        organisation=organisation, request_id=f"_req-{tag}", mode="test", browser_hash="0" * 64
    )
    TicketAttachmentFactory(
        message__ticket__organisation=organisation, message__ticket__contact_email="x@company.test"
    )
    card = PaymentMethod.objects.create(
        organisation=organisation,
        stripe_payment_method_id=f"pm_{tag}",
        brand="visa",
        last4="4242",
        exp_month=12,
        exp_year=2030,
        expires_at=datetime(2031, 1, 1, tzinfo=UTC),
    )
    invoice = issued_invoice(organisation=organisation, status=Invoice.Status.PAID)
    InvoiceDocument.objects.create(invoice=invoice, pdf=b"%PDF-1.7")
    Payment.objects.create(
        organisation=organisation,
        invoice=invoice,
        method_kind="card",
        payment_method=card,
        attempt=1,
        amount=invoice.total,
        currency=invoice.currency,
        status="succeeded",
        idempotency_key=f"pay-{tag}",
    )
    case = DunningCase.objects.create(
        organisation=organisation, subscription=subscription, status="resolved", started_at=ENDED_AT
    )
    DunningStep.objects.create(case=case, step="day_0", ran_at=ENDED_AT)
    OverageCharge.objects.create(
        organisation=organisation,
        subscription=subscription,
        invoice=invoice,
        month_start=ENDED_AT,
        month_end=ENDED_AT,
        transactions=1,
        transaction_limit=1,
        units=1,
        unit_amount=100,
        amount=100,
        currency="EUR",
        created_at=ENDED_AT,
    )
    # A balance credit (PROTECT to the organisation) and its use on the invoice (PROTECT to
    # the invoice and to the credit).
    credit = BalanceEntry.objects.create(
        organisation=organisation,
        currency=invoice.currency,
        kind="adjustment",
        amount=500,
        remaining=400,
        description="Adjustment by our team",
        reason="Goodwill",
        created_at=ENDED_AT,
    )
    BalanceEntry.objects.create(
        organisation=organisation,
        currency=invoice.currency,
        kind="applied",
        amount=-100,
        source=credit,
        invoice=invoice,
        description="Credit applied (balance adjustment)",
        created_at=ENDED_AT,
    )
    PlanChange.objects.create(
        subscription=subscription,
        kind="downgrade",
        status="canceled",
        from_plan=plan("professional"),
        to_plan=plan("standard"),
        billing_cycle="monthly",
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_syncinfo (organisation_id, environment_id, flow_id, batch_id, "
            "record_key, status, direction, synced_at, has_snapshot, retention_days) "
            "SELECT %s, %s, %s, 0, 'rec-' || g, 'success', 'outbound', %s - g * interval '1 day', "
            "true, 30 FROM generate_series(1, 25) g",  # Standard: 30 days, snapshots 7
            [organisation.pk, env.pk, flow.pk, ENDED_AT],
        )
        cursor.execute(
            "INSERT INTO usage_snapshot (sync_info_id, organisation_id, synced_at, payload, "
            "retention_days) "
            "SELECT id, organisation_id, synced_at, '{}'::jsonb, 7 FROM usage_syncinfo "
            "WHERE organisation_id = %s",
            [organisation.pk],
        )
    return subscription


# Rows per table of one organisation. Every model of our apps is listed (the test below fails
# when a new one appears), with the lookup to its organisation or None for shared tables.
ORGANISATION_PATHS = {
    "accounts.User": None,
    # A user's sessions and known browsers are the person's, not an organisation's.
    "accounts.UserSession": None,
    "accounts.KnownBrowser": None,
    "accounts.Organisation": "pk",
    "accounts.Membership": "organisation",
    "accounts.Invitation": "organisation",
    "accounts.PrimaryEmailChange": "organisation",
    "accounts.AuditEvent": "organisation",
    "accounts.OutgoingEmail": "organisation",
    "accounts.BillingRecipient": "organisation",
    "subscriptions.Plan": None,
    "subscriptions.PlanPrice": None,
    "subscriptions.Subscription": "organisation",
    "subscriptions.PlanChange": "subscription__organisation",
    "subscriptions.Environment": "organisation",
    "subscriptions.Connection": "organisation",
    "subscriptions.ProcessFlow": "organisation",
    "billing.BillingProfile": "organisation",
    "billing.TaxRate": None,
    "billing.PaymentMethod": "organisation",
    "billing.InvoiceSequence": None,
    "billing.Invoice": "organisation",
    "billing.InvoiceLine": "invoice__organisation",
    "billing.OverageCharge": "organisation",
    "billing.CarriedCharge": "organisation",
    "billing.InvoiceDocument": "invoice__organisation",
    "billing.Payment": "organisation",
    "billing.DunningCase": "organisation",
    "billing.DunningStep": "case__organisation",
    "billing.StripeEvent": None,
    "usage.ApiKey": "organisation",
    "usage.IngestBatch": "organisation",
    "usage.SyncInfo": "organisation",
    "usage.UsageCounter": "organisation",
    "usage.UsageAlert": "organisation",
    "usage.AlertThreshold": "organisation",
    "usage.AlertSettings": "organisation",
    "retention.DeletionRecord": "organisation",
    "retention.DataDeletionRequest": "organisation",
    "sso.SsoConfiguration": "organisation",
    "sso.SsoDomain": "organisation",
    "sso.SsoAttempt": "organisation",
    "sso.SsoRequest": "organisation",
    "billing.LedgerViolation": "organisation",
    "billing.ReconciliationDifference": "organisation",
    "billing.CreditNoteSequence": None,
    "billing.CreditNote": "organisation",
    "billing.CreditNoteLine": "credit_note__organisation",
    "billing.Refund": "organisation",
    "billing.BalanceEntry": "organisation",
    "billing.Dispute": "organisation",
    "support.SupportTicket": "organisation",
    "support.TicketMessage": "organisation",
    "support.TicketAttachment": "organisation",
}
PROJECT_APPS = {"accounts", "subscriptions", "billing", "usage", "retention", "sso", "support"}


def table_counts(organisation) -> dict[str, int]:
    counts = {}
    for model in apps.get_models():
        if model._meta.app_label not in PROJECT_APPS:
            continue
        label = model._meta.label
        path = ORGANISATION_PATHS[label]
        rows = model.objects.all()
        if path is not None:
            rows = rows.filter(**{path: organisation.pk})
        counts[label] = rows.count()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM usage_snapshot WHERE organisation_id = %s", [organisation.pk]
        )
        counts["usage_snapshot"] = cursor.fetchone()[0]
    return counts


KEPT = {
    "accounts.Organisation",
    "subscriptions.Subscription",
    "subscriptions.PlanChange",
    "billing.PaymentMethod",
    "billing.Invoice",
    "billing.InvoiceLine",
    "billing.InvoiceDocument",
    "billing.Payment",
    "billing.DunningCase",
    "billing.DunningStep",
    "billing.OverageCharge",
    "billing.CarriedCharge",
    # Findings about money: evidence for accounting, like the invoices they are about.
    "billing.LedgerViolation",
    "billing.ReconciliationDifference",
    # Corrections of invoices and the money they moved, kept with the invoices.
    "billing.CreditNote",
    "billing.CreditNoteLine",
    "billing.Refund",
    "billing.Dispute",
    # The customer balance: credits and what used them, applied to the invoices kept.
    "billing.BalanceEntry",
}


@pytest.fixture
def ended(org, admin, billing_user, member):
    return _fill(org)


@pytest.fixture
def bystander(other_org, outsider):
    """Globex, whose subscription ended on the same day: deleted too, but not before."""
    return _fill(other_org, ended_at=ENDED_AT + timedelta(days=5), tag="b")


def job(now):
    return run_job("delete_cancelled_organisations", now=now)


def test_the_job_is_registered_hourly_after_the_purge():
    registered = get_job("delete_cancelled_organisations")
    assert registered.order == 85
    assert registered.schedule.minute == {20}


def test_every_model_is_accounted_for():
    labels = {m._meta.label for m in apps.get_models() if m._meta.app_label in PROJECT_APPS}
    assert labels == set(ORGANISATION_PATHS)


def test_day_29_keeps_everything(org, ended, bystander):
    before = table_counts(org)
    # Only the reminders were added: Acme's 1-day one (primary email, Admin, Billing contact)
    # and Globex's 7-day one (primary email, Admin).
    assert job(DELETION_AT - timedelta(minutes=1)) == (
        "5 deletion reminder(s) queued, 0 organisation(s) deleted"
    )
    assert table_counts(org) == {**before, "accounts.OutgoingEmail": 1 + 3}
    # An account email: the confirmed billing recipients (ap-a@, ap-b@) get no reminder.
    reminded = OutgoingEmail.objects.filter(template__startswith="data_deletion_reminder")
    assert sorted(reminded.values_list("to_email", flat=True)) == sorted(
        [org.primary_email, "admin@acme.test", "billing@acme.test"]
        + [bystander.organisation.primary_email, "admin@globex.test"]
    )
    org.refresh_from_db()
    assert org.status == Organisation.Status.ACTIVE


def test_resubscribing_within_30_days_keeps_everything(org, ended, bystander):
    Subscription.objects.filter(pk=ended.pk).update(
        status=Subscription.Status.ACTIVE, ended_at=None
    )
    before = table_counts(org)
    job(DELETION_AT + timedelta(days=40))
    assert table_counts(org) == before
    org.refresh_from_db()
    assert org.status == Organisation.Status.ACTIVE
    assert not DeletionRecord.objects.filter(organisation=org).exists()


def test_day_30_deletes_everything_but_billing_records(
    org, admin, billing_user, member, ended, bystander
):
    before = table_counts(org)
    other_before = table_counts(bystander.organisation)
    users_before = set(
        Membership.objects.filter(organisation=org).values_list("user_id", flat=True)
    )

    # Globex gets its 7-day reminder (primary email and Admin) in the same run.
    assert job(DELETION_AT) == "2 deletion reminder(s) queued, 1 organisation(s) deleted"

    after = table_counts(org)
    # Shared tables (users, plans, ...) are unchanged; the organisation's rows are gone except
    # billing records; the deletion itself is recorded once.
    expected = {
        label: (count if label in KEPT or ORGANISATION_PATHS.get(label, "x") is None else 0)
        for label, count in before.items()
    }
    expected["retention.DeletionRecord"] = 1
    assert after == expected
    assert before["usage.SyncInfo"] == 25
    assert before["usage_snapshot"] == 25
    assert before["subscriptions.ProcessFlow"] == 2
    # Globex is not touched (its deletion date is 5 days later).
    assert table_counts(bystander.organisation) == {
        **other_before,
        "accounts.OutgoingEmail": other_before["accounts.OutgoingEmail"] + 2,
    }

    org.refresh_from_db()
    assert org.status == Organisation.Status.DELETED
    record = DeletionRecord.objects.get(organisation=org)
    assert record.kind == DeletionRecord.Kind.CANCELLATION
    assert record.organisation_label == "Acme Trading"
    assert record.created_at == DELETION_AT
    assert record.detail == "Subscription ended on 1 December 2026."
    assert record.counts == {
        "completed": True,
        "former_member_ids": sorted(users_before),
        "snapshots": 25,
        "sync_info": 25,
        "usage_counters": 1,
        "usage_alerts": 1,
        "usage_alert_thresholds": 1,
        "usage_alert_settings": 1,
        "ingest_batches": 1,
        "api_keys": 1,
        "process_flows": 2,
        "connections": 2,
        "environments": 1,
        "invitations": 1,
        "primary_email_changes": 1,
        "audit_events": 1,
        "outgoing_emails": 1,
        "billing_recipients": 1,
        "billing_profiles": 1,
        "sso_attempts": 1,
        "sso_requests": 1,
        "sso_domains": 1,
        "sso_configurations": 1,
        "support_attachments": 1,
        "support_messages": 1,
        "support_tickets": 1,
        "memberships": 3,
    }
    # Told by email, not tied to the deleted organisation.
    told = OutgoingEmail.objects.filter(template="data_deleted").order_by("to_email")
    assert [e.to_email for e in told] == sorted(
        [org.primary_email, admin.email, billing_user.email]
    )
    assert told[0].organisation is None
    assert told[0].subject == "Acme Trading: your APPSeCONNECT data was deleted"
    assert "permanently deleted on 31 December 2026" in " ".join(told[0].body_text.split())


def test_running_the_job_twice_changes_nothing_more(org, ended, bystander):
    job(DELETION_AT)
    after_first = table_counts(org)
    emails = OutgoingEmail.objects.count()
    assert job(DELETION_AT + timedelta(hours=1)).endswith("0 organisation(s) deleted")
    assert table_counts(org) == after_first
    assert OutgoingEmail.objects.count() == emails


def test_a_second_delete_is_refused(org, ended):
    organisation_data_delete(
        organisation=org, kind="gdpr_organisation", actor=None, now=DELETION_AT
    )
    with pytest.raises(ServiceError) as error:
        organisation_data_delete(
            organisation=org, kind="gdpr_organisation", actor=None, now=DELETION_AT
        )
    assert error.value.message == "Acme Trading was already deleted."
    assert DeletionRecord.objects.filter(organisation=org).count() == 1


def test_a_run_stopped_mid_way_resumes_and_keeps_its_counts(org, ended, monkeypatch):
    from retention import deletion

    steps = deletion.MODEL_STEPS
    monkeypatch.setattr(deletion, "MODEL_STEPS", steps[:4])  # stops before ProcessFlows
    monkeypatch.setattr(
        deletion.Organisation.objects, "select_for_update", _raise_after_first_call()
    )
    with pytest.raises(RuntimeError):
        organisation_data_delete(organisation=org, kind="cancellation", actor=None, now=ENDED_AT)
    monkeypatch.undo()
    assert ProcessFlow.objects.filter(organisation=org).count() == 2
    assert ApiKey.objects.filter(organisation=org).count() == 0
    record = organisation_data_delete(
        organisation=org, kind="cancellation", actor=None, now=DELETION_AT
    )
    assert DeletionRecord.objects.filter(organisation=org).count() == 1
    assert record.counts["api_keys"] == 1
    assert record.counts["sync_info"] == 25
    assert record.counts["process_flows"] == 2
    assert len(record.counts["former_member_ids"]) == 3


def _raise_after_first_call():
    original = Organisation.objects.select_for_update
    calls = []

    def select_for_update(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("crash before the end")
        return original(*args, **kwargs)

    return select_for_update


# Reminders -------------------------------------------------------------------------------


def reminders(org):
    return list(
        OutgoingEmail.objects.filter(
            organisation=org, template__startswith="data_deletion_reminder"
        ).order_by("template", "to_email")
    )


def test_reminders_7_and_1_day_before_once_each(org, admin, billing_user, member, ended):
    recipients = sorted([org.primary_email, admin.email, billing_user.email])
    assert job(DELETION_AT - timedelta(days=7, minutes=1)).startswith("0 deletion reminder(s)")
    assert reminders(org) == []

    assert job(DELETION_AT - timedelta(days=7)).startswith("3 deletion reminder(s)")
    assert job(DELETION_AT - timedelta(days=6)).startswith("0 deletion reminder(s)")
    sent = reminders(org)
    assert [(e.template, e.to_email) for e in sent] == [
        ("data_deletion_reminder:7", address) for address in recipients
    ]
    assert sent[0].subject == (
        "Acme Trading: your APPSeCONNECT data is deleted in 7 days, on 31 December 2026"
    )
    body = " ".join(sent[0].body_text.split())
    assert "/o/acme/settings/privacy/configuration-export/" in body
    assert "/o/acme/sync-info/export/" in body
    assert "/o/acme/settings/subscription/choose-plan/" in body

    assert job(DELETION_AT - timedelta(days=1)).startswith("3 deletion reminder(s)")
    assert job(DELETION_AT - timedelta(hours=2)).startswith("0 deletion reminder(s)")
    one_day = [e for e in reminders(org) if e.template == "data_deletion_reminder:1"]
    assert [e.to_email for e in one_day] == recipients
    assert one_day[0].subject == (
        "Acme Trading: your APPSeCONNECT data is deleted tomorrow, on 31 December 2026"
    )


def test_no_reminder_once_resubscribed(org, admin, ended):
    Subscription.objects.filter(pk=ended.pk).update(
        status=Subscription.Status.ACTIVE, ended_at=None
    )
    job(DELETION_AT - timedelta(days=1))
    assert reminders(org) == []


# The notice on sign-in -------------------------------------------------------------------


def test_a_former_member_is_told_on_sign_in(org, member, ended, client):
    job(DELETION_AT)
    client.force_login(member)
    response = client.get(reverse("accounts:home"))
    assert response.status_code == 200
    assert (
        "Acme Trading was deleted on 31 December 2026 (30 days after its subscription ended)."
        in response.content.decode()
    )
    assert client.get("/o/acme/").status_code == 404


def test_others_are_not_told(org, ended, outsider, client):
    job(DELETION_AT)
    stranger = UserFactory(email="stranger@example.test")
    MembershipFactory(organisation=outsider.memberships.get().organisation, user=stranger)
    client.force_login(stranger)
    response = client.get(reverse("accounts:organisations"))
    assert "was deleted" not in response.content.decode()
