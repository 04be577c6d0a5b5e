from datetime import UTC, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.delivery import email_deliver, email_deliver_pending
from accounts.emails import email_send
from accounts.models import OutgoingEmail
from tests.accounts.factories import InvitationFactory

pytestmark = pytest.mark.django_db


def send(org):
    return email_send(
        template="invitation",
        to="person@example.test",
        organisation=org,
        context={
            "invitation": InvitationFactory(organisation=org),
            "accept_url": "http://x/invitations/t/",
            "valid_days": 7,
        },
    )


def test_email_is_recorded_for_the_organisation_and_sent_only_after_commit(org, committed):
    with committed() as callbacks:
        [record] = send(org)
        assert mail.outbox == []  # nothing leaves before the transaction commits
    assert len(callbacks) == 1
    record.refresh_from_db()
    assert (record.organisation, record.status, record.attempts) == (org, "sent", 1)
    [message] = mail.outbox
    assert (
        message.subject == record.subject == "You are invited to join Acme Trading on APPSeCONNECT"
    )
    assert message.body == record.body_text
    assert message.alternatives[0].mimetype == "text/html"
    assert "Accept invitation" in message.alternatives[0].content


def test_rolled_back_transaction_sends_nothing(org, django_capture_on_commit_callbacks):
    from django.db import transaction

    with django_capture_on_commit_callbacks(execute=True):
        try:
            with transaction.atomic():
                send(org)
                raise RuntimeError("the service failed after queueing the email")
        except RuntimeError:
            pass
    assert mail.outbox == []
    assert OutgoingEmail.objects.count() == 0


def test_delivery_is_never_done_twice(org):
    [record] = send(org)
    now = timezone.now()
    assert email_deliver(email_id=record.pk, now=now) is True
    assert email_deliver(email_id=record.pk, now=now) is False
    assert len(mail.outbox) == 1


def test_failed_delivery_is_recorded_and_retried_by_the_job(org, settings):
    [record] = send(org)
    settings.EMAIL_BACKEND = "tests.core.failing_backend.FailingBackend"
    assert email_deliver(email_id=record.pk, now=timezone.now()) is False
    record.refresh_from_db()
    assert (record.status, record.attempts) == ("failed", 1)
    assert "SMTP is down" in record.last_error

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert email_deliver_pending(now=timezone.now()) == 0  # not yet a minute old
    assert email_deliver_pending(now=timezone.now() + timedelta(minutes=2)) == 1
    record.refresh_from_db()
    assert (record.status, record.attempts) == ("sent", 2)
    assert email_deliver_pending(now=timezone.now() + timedelta(minutes=3)) == 0
    assert len(mail.outbox) == 1


def test_dates_in_emails_show_in_the_organisations_time_zone(org, committed):
    from datetime import datetime

    org.time_zone = "Asia/Kolkata"
    org.save()
    invitation = InvitationFactory(
        organisation=org, expires_at=datetime(2026, 12, 4, 7, 0, tzinfo=UTC)
    )
    with committed():
        email_send(
            template="invitation",
            to="person@example.test",
            organisation=org,
            context={"invitation": invitation, "accept_url": "http://x/", "valid_days": 7},
        )
    assert "until 4 Dec 2026, 12:30 IST" in mail.outbox[0].body


def test_an_email_without_an_organisation_renders_in_utc(committed, db):
    from datetime import datetime

    with committed():
        [record] = email_send(
            template="card_expiring",
            to="someone@example.test",
            context={
                "card": type(
                    "Card",
                    (),
                    {
                        "get_brand_display": "Visa",
                        "last4": "4242",
                        "exp_month": 1,
                        "exp_year": 2031,
                    },
                )(),
                "payment_method_url": "http://x/",
                "at": datetime(2026, 1, 1, tzinfo=UTC),
            },
        )
    assert record.organisation is None
    assert mail.outbox[0].to == ["someone@example.test"]
