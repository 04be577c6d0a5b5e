"""Billing recipients: extra addresses that get the billing emails once confirmed by a link
(accounts/billing_recipients.py; docs/architecture.md#decision-billing-recipients)."""

import json
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse

from accounts.audit import Actor
from accounts.billing_recipients import (
    billing_recipient_add,
    billing_recipient_confirm,
    billing_recipient_remove,
    billing_recipient_resend,
)
from accounts.delivery import email_deliver_pending
from accounts.emails import email_send
from accounts.models import AuditEvent, BillingRecipient, Membership, OutgoingEmail
from accounts.selectors import account_recipients, billing_recipients
from billing.documents import invoice_document_original
from core.errors import ServiceError
from subscriptions.cancellation import subscription_cancel
from subscriptions.models import CancellationReason, Plan
from tests.accounts.factories import MembershipFactory, OrganisationFactory
from tests.billing.factories import issued_invoice
from tests.helpers import user_with_role
from tests.subscriptions.factories import (
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)
from usage.partitions import partitions_ensure
from usage.services import api_key_create, sync_info_ingest

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
LINK = re.compile(r"https?://[^\s\"<]+/billing-recipients/confirm/([\w-]+)/")


@pytest.fixture(autouse=True)
def _clock(time_machine):
    # Rows take their created_at from the clock, and the catch-up delivery compares with it.
    time_machine.move_to(NOW, tick=False)


def add(org, actor_user, email, *, now=NOW):
    return billing_recipient_add(
        organisation=org, actor=Actor(user=actor_user), email=email, now=now
    )


def token_in(message) -> str:
    """The token of the confirmation link in an email of mail.outbox."""
    return LINK.search(message.body)[1]


def added(org, admin, committed, email="ap@acme.test", *, now=NOW):
    """A pending recipient and the token its confirmation email carried."""
    mail.outbox.clear()
    with committed():
        recipient = add(org, admin, email, now=now)
    [message] = mail.outbox
    mail.outbox.clear()
    return recipient, token_in(message)


def confirmed(org, admin, committed, email="ap@acme.test"):
    recipient, token = added(org, admin, committed, email)
    billing_recipient_confirm(token=token, ip_address="203.0.113.9", now=NOW + timedelta(hours=1))
    recipient.refresh_from_db()
    return recipient


def state(org):
    """Everything an add or a refused request could change."""
    return (
        sorted(
            BillingRecipient.objects.filter(organisation=org).values_list(
                "email", "token_hash", "confirmed_at", "removed_at", "sent_count"
            )
        ),
        AuditEvent.objects.filter(organisation=org).count(),
        OutgoingEmail.objects.filter(organisation=org).count(),
    )


# Adding and confirming ----------------------------------------------------------------------


def test_adding_sends_a_confirmation_link_and_nothing_else_until_it_is_used(org, admin, committed):
    with committed():
        recipient = add(org, admin, "  AP@Acme.TEST ")
    assert (recipient.email, recipient.confirmed_at, recipient.removed_at) == (
        "ap@acme.test",
        None,
        None,
    )
    assert recipient.expires_at == NOW + timedelta(days=7)
    [message] = mail.outbox
    assert message.to == ["ap@acme.test"]
    assert message.subject == "Confirm ap@acme.test for the billing emails of Acme Trading"
    body = " ".join(message.body.split())
    assert "admin@acme.test added ap@acme.test as a billing recipient of Acme Trading" in body
    assert "It gets no access to APPSeCONNECT and no sign-in." in body
    assert "valid for 7 days and works once" in body
    assert token_in(message)
    # Pending: not among the billing recipients yet.
    assert billing_recipients(organisation=org) == [org.primary_email, "admin@acme.test"]
    event = AuditEvent.objects.get(action="billing_recipient.added")
    assert (event.actor_email, event.target_label, event.changes) == (
        "admin@acme.test",
        "ap@acme.test",
        {"status": {"old": None, "new": "pending confirmation"}},
    )
    assert event.target_id == str(recipient.public_id)


def test_the_link_asks_first_then_confirms_without_signing_in(client, org, admin, committed):
    recipient, token = added(org, admin, committed)
    url = reverse("accounts:billing_recipient_confirm", args=[token])

    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Send the billing emails of <strong>Acme Trading</strong> to" in html
    assert "Confirm ap@acme.test</button>" in html
    recipient.refresh_from_db()
    assert recipient.confirmed_at is None  # opening the link (a mail scanner) confirms nothing

    done = client.post(url, REMOTE_ADDR="203.0.113.9")
    assert done.status_code == 200
    assert "ap@acme.test now receives the billing emails of Acme Trading." in done.content.decode()
    recipient.refresh_from_db()
    assert recipient.confirmed_at is not None
    assert billing_recipients(organisation=org) == [
        org.primary_email,
        "admin@acme.test",
        "ap@acme.test",
    ]
    event = AuditEvent.objects.get(action="billing_recipient.confirmed")
    # Nobody signed in: the audit log names the address that used the link.
    assert (event.actor, event.actor_email, event.ip_address) == (
        None,
        "ap@acme.test",
        "203.0.113.9",
    )
    assert event.changes == {"status": {"old": "pending confirmation", "new": "confirmed"}}


def test_a_link_used_twice_is_explained_and_changes_nothing(client, org, admin, committed):
    recipient, token = added(org, admin, committed)
    url = reverse("accounts:billing_recipient_confirm", args=[token])
    assert client.post(url).status_code == 200
    before = state(org)
    for method in (client.get, client.post):
        again = method(url)
        assert again.status_code == 410
        text = " ".join(again.content.decode().split())
        assert "<h1>Already confirmed</h1>" in text
        assert 'class="alert alert--info" role="status"' in text
        assert "This link has already been used: ap@acme.test was confirmed on" in text
        assert "Nothing else to do." in text
    assert state(org) == before
    with pytest.raises(ServiceError) as refused:
        billing_recipient_confirm(token=token, ip_address=None, now=NOW + timedelta(days=1))
    assert refused.value.code == "used"


def test_an_expired_link_is_explained_and_changes_nothing(
    client, org, admin, committed, time_machine
):
    recipient, token = added(org, admin, committed)
    time_machine.move_to(recipient.expires_at + timedelta(seconds=1), tick=False)
    before = state(org)
    for method in (client.get, client.post):
        page = method(reverse("accounts:billing_recipient_confirm", args=[token]))
        assert page.status_code == 410
        assert (
            "This confirmation link expired on 17 Nov 2026. Ask your contact at Acme Trading "
            "to resend it (Settings &gt; Billing &gt; Billing recipients). Nothing was changed."
        ) in page.content.decode()
    assert state(org) == before
    assert billing_recipients(organisation=org) == [org.primary_email, "admin@acme.test"]


def test_a_link_of_a_removed_address_or_an_old_link_no_longer_works(client, org, admin, committed):
    recipient, token = added(org, admin, committed)
    billing_recipient_remove(recipient=recipient, actor=Actor(user=admin), now=NOW)
    before = state(org)
    page = client.post(reverse("accounts:billing_recipient_confirm", args=[token]))
    assert page.status_code == 410
    assert (
        "ap@acme.test was removed from the billing recipients of Acme Trading on 10 Nov 2026"
        in (page.content.decode())
    )
    assert state(org) == before

    unknown = client.get(reverse("accounts:billing_recipient_confirm", args=["no-such-token"]))
    assert unknown.status_code == 404
    assert "This confirmation link is not valid." in unknown.content.decode()


# Who gets which email -------------------------------------------------------------------------


def test_a_confirmed_address_gets_the_invoice_email_an_unconfirmed_one_never(org, admin, committed):
    confirmed(org, admin, committed, "ap@acme.test")
    added(org, admin, committed, "pending@acme.test")
    invoice = issued_invoice(organisation=org)
    mail.outbox.clear()
    with committed():
        invoice_document_original(invoice=invoice, now=NOW)
    assert sorted(to for message in mail.outbox for to in message.to) == sorted(
        [org.primary_email, "admin@acme.test", "ap@acme.test"]
    )
    assert {message.subject.split(":")[0] for message in mail.outbox} == {
        f"Invoice {invoice.number} from APPSeCONNECT"
    }
    row = OutgoingEmail.objects.get(template="invoice_issued", to_email="ap@acme.test")
    assert row.billing_recipient.email == "ap@acme.test"
    assert row.status == OutgoingEmail.Status.SENT
    # The footer suits a mailbox without an account as well as a member.
    assert "You receive this email about the APPSeCONNECT account of Acme Trading." in (
        row.body_html
    )


def test_a_confirmed_address_gets_the_usage_alert(org, admin, committed, time_machine):
    time_machine.move_to(NOW, tick=False)
    confirmed(org, admin, committed, "ap@acme.test")
    added(org, admin, committed, "pending@acme.test")
    Plan.objects.filter(code="standard").update(monthly_transactions=10)
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="standard"))
    environment = EnvironmentFactory(organisation=org)
    flow = ProcessFlowFactory(organisation=org, environment=environment)
    key, _ = api_key_create(environment=environment, actor=Actor(user=admin), name="k", now=NOW)
    partitions_ensure(now=NOW)
    records = [
        {
            "flow_id": str(flow.public_id),
            "record_key": f"order-{n}",
            "status": "success",
            "direction": "outbound",
            "synced_at": NOW.isoformat(),
        }
        for n in range(8)
    ]
    mail.outbox.clear()
    with committed():
        result = sync_info_ingest(
            key=key,
            idempotency_key="batch-1",
            body=json.dumps({"records": records}).encode(),
            now=NOW,
        )
    assert result.status_code == 201
    alerts = [m for m in mail.outbox if "80%" in m.subject]
    assert sorted(to for message in alerts for to in message.to) == sorted(
        [org.primary_email, "admin@acme.test", "ap@acme.test"]
    )


def test_account_emails_never_go_to_billing_recipients(org, admin, billing_user, committed):
    confirmed(org, admin, committed, "ap@acme.test")
    assert account_recipients(organisation=org) == [
        org.primary_email,
        "admin@acme.test",
        "billing@acme.test",
    ]
    subscription = SubscriptionFactory(organisation=org)
    mail.outbox.clear()
    with committed():
        subscription_cancel(
            subscription=subscription,
            actor=Actor(user=admin),
            reason=CancellationReason.TOO_EXPENSIVE,
            detail="",
            now=NOW,
        )
    cancelled = [m for m in mail.outbox if "subscription is cancelled" in m.subject]
    assert sorted(to for m in cancelled for to in m.to) == sorted(
        [org.primary_email, "admin@acme.test", "billing@acme.test"]
    )
    assert all("ap@acme.test" not in m.to for m in mail.outbox)


def test_removing_stops_at_once_even_what_is_already_queued(org, admin, committed):
    recipient = confirmed(org, admin, committed, "ap@acme.test")
    # Queued (the transaction committed) but not delivered yet: no on_commit run here.
    email_send(
        template="service_restored",
        to=billing_recipients(organisation=org),
        context={},
        organisation=org,
    )
    queued = OutgoingEmail.objects.get(template="service_restored", to_email="ap@acme.test")
    assert queued.billing_recipient_id == recipient.pk
    mail.outbox.clear()
    with committed():
        billing_recipient_remove(recipient=recipient, actor=Actor(user=admin), now=NOW)
    queued.refresh_from_db()
    assert queued.status == OutgoingEmail.Status.WITHHELD

    # The catch-up job delivers the others; the removed address gets nothing, now or later.
    assert email_deliver_pending(now=NOW + timedelta(days=1)) == 2
    assert email_deliver_pending(now=NOW + timedelta(days=1)) == 0
    assert sorted(to for m in mail.outbox for to in m.to) == [
        "admin@acme.test",
        org.primary_email,
    ]
    assert billing_recipients(organisation=org) == [org.primary_email, "admin@acme.test"]
    event = AuditEvent.objects.get(action="billing_recipient.removed")
    assert event.changes == {"status": {"old": "confirmed", "new": "removed"}}


def test_an_email_queued_by_a_sender_that_missed_the_removal_is_withheld(org, admin, committed):
    recipient = confirmed(org, admin, committed, "ap@acme.test")
    email_send(template="service_restored", to=["ap@acme.test"], context={}, organisation=org)
    # The removal's own update missed the row (as if it was queued just after): delivery
    # still checks the recipient.
    BillingRecipient.objects.filter(pk=recipient.pk).update(removed_at=NOW)
    mail.outbox.clear()
    assert email_deliver_pending(now=NOW + timedelta(minutes=5)) == 0
    assert mail.outbox == []
    assert OutgoingEmail.objects.get(template="service_restored").status == "withheld"


# Bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("", "Enter an email address."),
        ("not-an-address", "Enter a valid email address, such as ap@example.com."),
        (
            "BILLING0@company.test",
            "billing0@company.test is the primary email of Acme Trading: it already gets every "
            "billing email.",
        ),
        (
            "Admin@Acme.test",
            "admin@acme.test is a user of Acme Trading (Admin) and already gets every billing "
            "email.",
        ),
        (
            "member@acme.test",
            "member@acme.test is a user of Acme Trading. Billing recipients are for addresses "
            "without an account here; an Admin can make that user a Billing contact instead.",
        ),
        (
            "gone@acme.test",
            "gone@acme.test belongs to a deactivated user of Acme Trading. Billing recipients "
            "are for addresses without an account here.",
        ),
        (
            "AP@acme.test",
            "ap@acme.test is already a billing recipient, waiting for confirmation. Use Resend "
            "confirmation if the email did not arrive.",
        ),
        ("done@ACME.test", "done@acme.test is already a billing recipient (confirmed)."),
    ],
)
def test_refused_addresses_save_nothing(org, admin, member, committed, email, message):
    org.primary_email = "billing0@company.test"
    org.save(update_fields=["primary_email"])
    MembershipFactory(
        organisation=org,
        user=user_with_role(OrganisationFactory(), "member", "gone@acme.test"),
        status=Membership.Status.DEACTIVATED,
    )
    added(org, admin, committed, "ap@acme.test")
    confirmed(org, admin, committed, "done@acme.test")
    before = state(org)
    mail.outbox.clear()
    with pytest.raises(ServiceError) as refused, committed():
        add(org, admin, email)
    assert (refused.value.message, refused.value.field) == (message, "email")
    assert state(org) == before
    assert mail.outbox == []


def test_five_at_most_pending_ones_included_and_a_removed_one_frees_its_place(
    org, admin, committed
):
    recipients = [add(org, admin, f"ap{n}@acme.test") for n in range(5)]
    before = state(org)
    with pytest.raises(ServiceError) as refused:
        add(org, admin, "sixth@acme.test")
    assert refused.value.message == (
        "Acme Trading already has 5 billing recipients, the most it may have. Remove one to "
        "add another."
    )
    assert state(org) == before
    billing_recipient_remove(recipient=recipients[0], actor=Actor(user=admin), now=NOW)
    # The removed address may come back; the old row stays, removed, for the record.
    again = add(org, admin, "AP0@acme.test")
    assert again.pk != recipients[0].pk
    assert BillingRecipient.objects.filter(organisation=org, email="ap0@acme.test").count() == 2
    assert BillingRecipient.objects.filter(organisation=org, removed_at__isnull=True).count() == 5


def test_another_organisations_recipients_do_not_count(org, other_org, admin, outsider):
    for n in range(5):
        add(other_org, outsider, f"ap{n}@globex.test")
    assert add(org, admin, "ap0@globex.test").email == "ap0@globex.test"
    assert billing_recipients(organisation=org) == [org.primary_email, "admin@acme.test"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_tabs_adding_the_fifth_at_once_make_five_not_six():
    org = OrganisationFactory(name="Acme Trading")
    admin = MembershipFactory(organisation=org, role="admin").user
    for n in range(4):
        add(org, admin, f"ap{n}@acme.test")
    barrier = threading.Barrier(2)
    outcomes = []

    def tab(email):
        try:
            barrier.wait()
            add(org, admin, email)
            outcomes.append("added")
        except ServiceError as error:
            outcomes.append(error.message)
        finally:
            connection.close()

    threads = [threading.Thread(target=tab, args=(f"tab{n}@acme.test",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [
        "Acme Trading already has 5 billing recipients, the most it may have. Remove one to "
        "add another.",
        "added",
    ]
    assert BillingRecipient.objects.filter(organisation=org).count() == 5


# Resend and remove --------------------------------------------------------------------------


def test_resend_waits_ten_minutes_then_replaces_the_link(client, org, admin, committed):
    recipient, old_token = added(org, admin, committed)
    before = state(org)
    with pytest.raises(ServiceError) as refused:
        billing_recipient_resend(
            recipient=recipient, actor=Actor(user=admin), now=NOW + timedelta(minutes=9)
        )
    assert refused.value.message == (
        "A confirmation email was sent to ap@acme.test less than 10 minutes ago. Check that "
        "mailbox (and its spam folder); you can resend from 09:10."
    )
    assert state(org) == before

    later = NOW + timedelta(days=8)  # the first link has expired meanwhile
    with committed():
        billing_recipient_resend(recipient=recipient, actor=Actor(user=admin), now=later)
    [message] = mail.outbox
    assert message.to == ["ap@acme.test"]
    new_token = token_in(message)
    recipient.refresh_from_db()
    assert (recipient.sent_count, recipient.last_sent_at, recipient.expires_at) == (
        2,
        later,
        later + timedelta(days=7),
    )
    assert AuditEvent.objects.filter(action="billing_recipient.confirmation_resent").count() == 1
    old = client.post(reverse("accounts:billing_recipient_confirm", args=[old_token]))
    assert old.status_code == 404
    billing_recipient_confirm(token=new_token, ip_address=None, now=later + timedelta(hours=1))
    recipient.refresh_from_db()
    assert recipient.confirmed_at == later + timedelta(hours=1)


def test_resend_and_remove_are_refused_when_there_is_nothing_to_do(org, admin, committed):
    recipient = confirmed(org, admin, committed)
    with pytest.raises(ServiceError, match=r"already confirmed \(on 10 Nov 2026\)"):
        billing_recipient_resend(
            recipient=recipient, actor=Actor(user=admin), now=NOW + timedelta(days=1)
        )
    billing_recipient_remove(recipient=recipient, actor=Actor(user=admin), now=NOW)
    before = state(org)
    with pytest.raises(ServiceError, match="ap@acme.test was already removed."):
        billing_recipient_remove(recipient=recipient, actor=Actor(user=admin), now=NOW)
    with pytest.raises(ServiceError, match="was removed; add it again"):
        billing_recipient_resend(
            recipient=recipient, actor=Actor(user=admin), now=NOW + timedelta(days=1)
        )
    assert state(org) == before


# Notifications and the audit log ---------------------------------------------------------------


def test_notifications_label_billing_recipients_for_admins_and_billing_contacts(
    client_for, org, admin, billing_user, committed
):
    confirmed(org, admin, committed, "ap@acme.test")
    with committed():
        email_send(
            template="service_restored",
            to=billing_recipients(organisation=org),
            context={},
            organisation=org,
        )
    for user in (admin, billing_user):
        page = client_for(user).get(reverse("accounts:notifications", args=[org.slug]))
        [restored] = [n for n in page.context["notifications"] if "restored" in n.subject]
        assert restored.recipients == [
            org.primary_email,
            "admin@acme.test",
            "billing@acme.test",
            "ap@acme.test",
        ]
        html = " ".join(page.content.decode().split())
        assert 'ap@acme.test <span class="muted">(billing recipient)</span>' in html


def test_notifications_say_an_email_was_withheld(client_for, org, admin, committed):
    recipient = confirmed(org, admin, committed, "ap@acme.test")
    email_send(
        template="service_restored",
        to=billing_recipients(organisation=org),
        context={},
        organisation=org,
    )
    billing_recipient_remove(recipient=recipient, actor=Actor(user=admin), now=NOW)
    page = client_for(admin).get(reverse("accounts:notifications", args=[org.slug]))
    html = " ".join(page.content.decode().split())
    assert 'ap@acme.test <span class="muted">(billing recipient, removed before it was sent)' in (
        html
    )


def test_the_audit_log_shows_every_add_confirm_resend_and_remove(client_for, org, admin, committed):
    recipient, token = added(org, admin, committed)
    billing_recipient_resend(
        recipient=recipient, actor=Actor(user=admin), now=NOW + timedelta(minutes=10)
    )
    other, other_token = added(org, admin, committed, "payables@acme.test")
    billing_recipient_confirm(token=other_token, ip_address=None, now=NOW + timedelta(hours=1))
    billing_recipient_remove(recipient=recipient, actor=Actor(user=admin), now=NOW)
    page = client_for(admin).get(reverse("accounts:audit_log", args=[org.slug]))
    html = page.content.decode()
    for action in (
        "billing_recipient.added",
        "billing_recipient.confirmation_resent",
        "billing_recipient.confirmed",
        "billing_recipient.removed",
    ):
        assert f'<td data-label="What" class="stack-block wrap-anywhere">{action}<div' in html, (
            action
        )
    # Who confirmed: the address itself.
    assert '<td data-label="Who" class="wrap-anywhere">payables@acme.test</td>' in html
