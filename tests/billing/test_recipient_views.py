"""Settings > Billing > Billing recipients: the page, Add, Resend confirmation and Remove
(billing/recipient_views.py; the rules are tested in tests/accounts/test_billing_recipients.py)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit import Actor
from accounts.billing_recipients import billing_recipient_add
from accounts.models import AuditEvent, BillingRecipient, OutgoingEmail

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clock(time_machine):
    time_machine.move_to(NOW, tick=False)


def page_url(org):
    return reverse("billing:recipients", args=[org.slug])


def action_url(name, org, recipient):
    return reverse(f"billing:recipient_{name}", args=[org.slug, recipient.public_id])


def add(org, user, email, *, now=NOW):
    return billing_recipient_add(organisation=org, actor=Actor(user=user), email=email, now=now)


def state(org):
    return (
        sorted(
            BillingRecipient.objects.filter(organisation=org).values_list(
                "email", "token_hash", "confirmed_at", "removed_at", "sent_count"
            )
        ),
        AuditEvent.objects.filter(organisation=org).count(),
        OutgoingEmail.objects.filter(organisation=org).count(),
    )


def flash(response) -> list[str]:
    """The messages the response left for the next page (those of an earlier redirect that
    no page showed yet come first)."""
    return [str(message) for message in get_messages(response.wsgi_request)]


def text(response) -> str:
    return " ".join(response.content.decode().split())


def test_admins_and_billing_contacts_see_each_address_with_its_status(
    client_for, org, admin, billing_user
):
    add(org, admin, "ap@acme.test")
    done = add(org, admin, "payables@acme.test")
    BillingRecipient.objects.filter(pk=done.pk).update(confirmed_at=NOW + timedelta(days=2))
    for user in (admin, billing_user):
        response = client_for(user).get(page_url(org))
        assert response.status_code == 200
        html = text(response)
        assert 'aria-current="page">Billing recipients</a>' in html
        assert "<td>ap@acme.test</td>" in html
        assert '<span class="badge badge--warn">Pending confirmation</span>' in html
        assert "Link sent 10 Nov 2026, 09:00, valid until 17 Nov 2026, 09:00" in html
        assert "<td>payables@acme.test</td>" in html
        assert (
            '<span class="badge badge--ok">Confirmed</span> <span class="small">on 12 Nov 2026'
            in (html)
        )
        # Resend only for the pending one; Remove for both.
        assert html.count(">Resend confirmation<") == 1
        assert html.count(">Remove<") == 2
        assert '<label for="id_email">Email address</label>' in html


def test_the_empty_page_says_what_to_do(client_for, org, admin):
    html = text(client_for(admin).get(page_url(org)))
    assert "No billing recipients yet. Add an address below" in html
    assert "Send confirmation link</button>" in html


def test_members_get_403_and_change_nothing(client_for, org, admin, member):
    recipient = add(org, admin, "ap@acme.test")
    client = client_for(member)
    before = state(org)
    assert client.get(page_url(org)).status_code == 403
    assert client.post(page_url(org), {"email": "x@evil.test"}).status_code == 403
    for name in ("resend", "remove"):
        assert client.post(action_url(name, org, recipient)).status_code == 403
    assert state(org) == before


def test_adding_from_the_page(client_for, org, billing_user, mailoutbox, committed):
    with committed():
        response = client_for(billing_user).post(page_url(org), {"email": "AP@acme.test"})
    assert response.status_code == 302
    assert response["Location"] == page_url(org)
    assert flash(response) == [
        "We emailed a confirmation link to ap@acme.test. It receives the billing emails once "
        "the link is used."
    ]
    recipient = BillingRecipient.objects.get(organisation=org)
    assert (recipient.email, recipient.created_by) == ("ap@acme.test", billing_user)
    assert [m.to for m in mailoutbox] == [["ap@acme.test"]]


@pytest.mark.parametrize(
    ("email", "error"),
    [
        ("", "This field is required."),
        ("not-an-address", "Enter a valid email address, such as ap@example.com."),
        ("admin@acme.test", "admin@acme.test is a user of Acme Trading (Admin)"),
        ("AP@ACME.TEST", "ap@acme.test is already a billing recipient, waiting for confirmation"),
    ],
)
def test_bad_input_shows_the_error_on_the_field_and_saves_nothing(
    client_for, org, admin, email, error
):
    add(org, admin, "ap@acme.test")
    before = state(org)
    response = client_for(admin).post(page_url(org), {"email": email})
    assert response.status_code == 400
    assert error in response.content.decode()
    assert response.context["form"].errors["email"][0].startswith(error)
    assert state(org) == before


def test_a_sixth_is_refused_and_a_full_list_offers_no_form(client_for, org, admin):
    for n in range(5):
        add(org, admin, f"ap{n}@acme.test")
    client = client_for(admin)
    html = text(client.get(page_url(org)))
    assert "Acme Trading has 5 billing recipients, the most it may have." in html
    assert "Send confirmation link</button>" not in html
    before = state(org)
    response = client.post(page_url(org), {"email": "sixth@acme.test"})
    assert response.status_code == 400
    assert (
        "Acme Trading already has 5 billing recipients, the most it may have. Remove one to add "
        "another."
    ) in response.content.decode()
    assert state(org) == before


def test_resend_from_the_page(client_for, org, admin, time_machine):
    recipient = add(org, admin, "ap@acme.test")
    client = client_for(admin)
    too_soon = client.post(action_url("resend", org, recipient))
    assert too_soon["Location"] == page_url(org)
    assert flash(too_soon) == [
        "A confirmation email was sent to ap@acme.test less than 10 minutes ago. Check that "
        "mailbox (and its spam folder); you can resend from 09:10."
    ]
    time_machine.move_to(NOW + timedelta(minutes=10), tick=False)
    sent = client.post(action_url("resend", org, recipient))
    assert flash(sent)[-1] == "We sent a new confirmation link to ap@acme.test."
    recipient.refresh_from_db()
    assert recipient.sent_count == 2


def test_remove_from_the_page_then_again(client_for, org, admin):
    recipient = add(org, admin, "ap@acme.test")
    client = client_for(admin)
    removed = client.post(action_url("remove", org, recipient))
    assert removed["Location"] == page_url(org)
    assert flash(removed) == ["ap@acme.test was removed. It receives no more billing emails."]
    recipient.refresh_from_db()
    assert (recipient.removed_at, recipient.removed_by) == (NOW, admin)
    listed = client.get(page_url(org))
    assert "ap@acme.test was removed. It receives no more billing emails." in text(listed)
    assert "<td>ap@acme.test</td>" not in text(listed)
    # A second tab still showing it: told, nothing changes.
    before = state(org)
    again = client.post(action_url("remove", org, recipient))
    assert flash(again) == ["ap@acme.test was already removed."]
    assert state(org) == before


def test_another_organisations_recipient_is_404(client_for, org, other_org, admin, outsider):
    theirs = add(other_org, outsider, "ap@globex.test")
    before = state(other_org)
    client = client_for(admin)
    for name in ("resend", "remove"):
        # Their id under our organisation, and under theirs (where we are no member).
        assert client.post(action_url(name, org, theirs)).status_code == 404
        assert client.post(action_url(name, other_org, theirs)).status_code == 404
    assert client.get(page_url(other_org)).status_code == 404
    assert "ap@globex.test" not in text(client.get(page_url(org)))
    assert state(other_org) == before


def test_the_page_runs_the_same_queries_for_one_or_five(client_for, org, admin):
    client = client_for(admin)
    add(org, admin, "ap0@acme.test")
    client.get(page_url(org))  # warm the session
    with CaptureQueriesContext(connection) as one:
        assert client.get(page_url(org)).status_code == 200
    for n in range(1, 5):
        add(org, admin, f"ap{n}@acme.test")
    with CaptureQueriesContext(connection) as five:
        assert client.get(page_url(org)).status_code == 200
    assert len(five.captured_queries) == len(one.captured_queries)
