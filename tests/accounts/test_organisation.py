import re
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Organisation, PrimaryEmailChange
from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def settings_url(org):
    return reverse("accounts:organisation", args=[org.slug])


def email_url(org):
    return reverse("accounts:organisation_primary_email", args=[org.slug])


def verify_link(message) -> str:
    match = re.search(r"https?://[^/\s]+(/verify-primary-email/[^\s/]+/)", message.body)
    assert match, message.body
    return match.group(1)


def test_admin_renames_the_organisation_and_it_is_audited(client_for, admin, org):
    response = client_for(admin).post(
        settings_url(org),
        {"name": "  Acme   Trading Ltd ", "time_zone": "Europe/London"},
        REMOTE_ADDR="203.0.113.9",
    )
    assert response.status_code == 302
    org.refresh_from_db()
    assert (org.name, org.time_zone, org.slug) == ("Acme Trading Ltd", "Europe/London", "acme")
    event = AuditEvent.objects.get(action="organisation.updated")
    assert event.changes == {
        "name": {"old": "Acme Trading", "new": "Acme Trading Ltd"},
        "time_zone": {"old": "UTC", "new": "Europe/London"},
    }
    assert (event.actor, event.ip_address) == (admin, "203.0.113.9")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "This field is required."),
        ("     ", "This field is required."),
        ("x" * 101, "Ensure this value has at most 100 characters (it has 101)."),
    ],
)
def test_bad_organisation_names_are_refused(client_for, admin, org, name, message):
    response = client_for(admin).post(settings_url(org), {"name": name, "time_zone": "UTC"})
    assert response.status_code == 400
    assert message in response.content.decode()
    org.refresh_from_db()
    assert org.name == "Acme Trading"
    assert not AuditEvent.objects.filter(action="organisation.updated").exists()


def test_unknown_time_zone_is_refused(client_for, admin, org):
    response = client_for(admin).post(settings_url(org), {"name": "Acme", "time_zone": "Mars/Base"})
    assert "Select a valid choice" in response.content.decode()
    org.refresh_from_db()
    assert org.time_zone == "UTC"


def test_primary_email_changes_only_after_verification(client, client_for, admin, org, committed):
    org.primary_email = "old@acme.test"
    org.save()
    with committed():
        response = client_for(admin).post(email_url(org), {"new_email": "Finance@Acme.test"})
    assert response.status_code == 302
    org.refresh_from_db()
    assert org.primary_email == "old@acme.test"  # the old address stays primary for now
    verify, notice = mail.outbox
    assert verify.to == ["finance@acme.test"]
    assert notice.to == ["old@acme.test"]
    assert "Nothing changes until finance@acme.test is verified" in notice.body
    page = client_for(admin).get(settings_url(org)).content.decode()
    assert "Waiting for verification of <strong>finance@acme.test</strong>" in page

    client.logout()
    link = verify_link(verify)
    assert "Make <strong>finance@acme.test</strong>" in client.get(link).content.decode()
    org.refresh_from_db()
    assert org.primary_email == "old@acme.test"  # a GET (e.g. a mail scanner) changes nothing
    with committed():
        response = client.post(link)
    assert response.status_code == 200
    org.refresh_from_db()
    assert org.primary_email == "finance@acme.test"
    assert mail.outbox[-1].to == ["old@acme.test"]
    assert "is now the primary email address" in mail.outbox[-1].body
    event = AuditEvent.objects.get(action="organisation.primary_email_changed")
    assert event.changes == {"primary_email": {"old": "old@acme.test", "new": "finance@acme.test"}}


def test_verification_link_used_twice_is_refused(client, client_for, admin, org, committed):
    with committed():
        client_for(admin).post(email_url(org), {"new_email": "finance@acme.test"})
    link = verify_link(mail.outbox[0])
    client.logout()
    client.post(link)
    again = client.post(link)
    assert again.status_code == 410
    assert "This link has already been used" in again.content.decode()
    assert AuditEvent.objects.filter(action="organisation.primary_email_changed").count() == 1


def test_older_link_stops_working_after_a_newer_change(client, client_for, admin, org, committed):
    admin_client = client_for(admin)
    with committed():
        admin_client.post(email_url(org), {"new_email": "first@acme.test"})
        admin_client.post(email_url(org), {"new_email": "second@acme.test"})
    first_link = verify_link(mail.outbox[0])
    second_link = verify_link(mail.outbox[2])
    client.logout()
    response = client.post(first_link)
    assert response.status_code == 410
    assert "replaced by a newer change" in response.content.decode()
    org.refresh_from_db()
    assert org.primary_email == "billing0@company.test" or org.primary_email.endswith(
        "@company.test"
    )
    client.post(second_link)
    org.refresh_from_db()
    assert org.primary_email == "second@acme.test"


def test_expired_verification_link_is_refused(client, client_for, admin, org, committed):
    old = org.primary_email
    with committed():
        client_for(admin).post(email_url(org), {"new_email": "finance@acme.test"})
    link = verify_link(mail.outbox[0])
    client.logout()
    with time_machine.travel(timezone.now() + timedelta(days=3, minutes=1)):
        response = client.post(link)
    assert response.status_code == 410
    assert "expired" in response.content.decode()
    org.refresh_from_db()
    assert org.primary_email == old


@pytest.mark.parametrize(
    ("value", "message"),
    [("not-email", "Enter a valid email address."), ("", "This field is required.")],
)
def test_bad_primary_email_is_refused(client_for, admin, org, value, message):
    response = client_for(admin).post(email_url(org), {"new_email": value})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert PrimaryEmailChange.objects.count() == 0


def test_same_primary_email_is_refused(client_for, admin, org):
    response = client_for(admin).post(email_url(org), {"new_email": org.primary_email.upper()})
    assert "That is already the primary email address." in response.content.decode()
    assert PrimaryEmailChange.objects.count() == 0


def test_audit_log_shows_changes_to_admins(client_for, admin, org):
    client = client_for(admin)
    client.post(settings_url(org), {"name": "Acme Two", "time_zone": "UTC"})
    body = client.get(reverse("accounts:audit_log", args=[org.slug])).content.decode()
    assert "organisation.updated" in body
    assert "Acme Trading → Acme Two" in body
    assert "admin@acme.test" in body


def test_audit_log_query_count_is_constant(client_for, admin, org, django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(admin)
    audit_url = reverse("accounts:audit_log", args=[org.slug])
    client.post(settings_url(org), {"name": "A1", "time_zone": "UTC"})
    client.get(audit_url)
    with CaptureQueriesContext(connection) as few:
        client.get(audit_url)
    expected = len(few.captured_queries)
    for i in range(30):
        client.post(settings_url(org), {"name": f"A{i + 2}", "time_zone": "UTC"})
    with django_assert_num_queries(expected):
        client.get(audit_url)


def test_audit_log_is_scoped_to_the_organisation(client_for, admin, org, other_org):
    other_admin = MembershipFactory(organisation=other_org, role="admin").user
    client_for(other_admin).post(
        settings_url(other_org), {"name": "Globex Secret", "time_zone": "UTC"}
    )
    body = client_for(admin).get(reverse("accounts:audit_log", args=[org.slug])).content.decode()
    assert "Globex Secret" not in body
    assert Organisation.objects.get(pk=other_org.pk).name == "Globex Secret"
