"""Notifications link each email to the page where its action is (accounts.notification_links,
the pages per email in portal.frame.NOTIFICATION_PAGES): the email's own object when its text
links to it, only inside the notification's organisation, and only a page the reader's role may
open."""

import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from accounts.models import OutgoingEmail
from accounts.selectors import SECRET_LINK_TEMPLATES
from core.links import absolute_url
from portal.frame import NOTIFICATION_PAGES
from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db

EMAIL_TEMPLATES = Path(settings.BASE_DIR) / "templates" / "emails"


def sent(organisation, to, *, template, body="", subject=None, at=None):
    """One email as email_send records it: a row per recipient, sharing a message id."""
    message_id = uuid.uuid4()
    for address in to:
        OutgoingEmail.objects.create(
            organisation=organisation,
            message_id=message_id,
            to_email=address,
            template=template,
            subject=subject or f"A {template} email",
            body_text=body,
            created_at=at or timezone.now(),
        )


def links(client, org):
    """[(subject, link url or None)] of the Notifications page, newest first."""
    response = client.get(reverse("accounts:notifications", args=[org.slug]))
    assert response.status_code == 200
    return [(n.subject, n.link.url if n.link else None) for n in response.context["notifications"]]


def only_link(client, org):
    [(_subject, url)] = links(client, org)
    return url


def path(name, org, *args):
    return reverse(name, args=[org.slug, *args])


def test_every_registered_email_and_page_exists(org):
    for template, pages in NOTIFICATION_PAGES.items():
        assert (EMAIL_TEMPLATES / template / "body.txt").exists(), template
        for url_name, text, *_narrow in pages:
            assert text
            # Either a page of the organisation, or one of its objects (then the email links it).
            try:
                reverse(url_name, args=[org.slug])
            except NoReverseMatch:
                object_id = uuid.uuid4() if url_name == "support:ticket" else "X-1"
                reverse(url_name, args=[org.slug, object_id])


CASES = [
    # template, URL name and object in the email's text (or None), expected URL name + object
    (
        "payment_action_required",
        ("billing:confirm_payment", "INV-2026-000007"),
        ("billing:confirm_payment", "INV-2026-000007"),
    ),
    (
        "credit_note_issued",
        ("billing:credit_note_pdf", "CN-2026-000002"),
        ("billing:credit_note_pdf", "CN-2026-000002"),
    ),
    ("payment_failed", ("billing:payment_method",), ("billing:payment_method",)),
    ("card_expiring", ("billing:payment_method",), ("billing:payment_method",)),
    # The confirm link is only in the email when a payment awaits the bank.
    ("payment_reminder", ("billing:payment_method",), ("billing:payment_method",)),
    (
        "grace_period",
        ("billing:confirm_payment", "INV-2026-000009"),
        ("billing:confirm_payment", "INV-2026-000009"),
    ),
    ("downgrade_scheduled", ("subscriptions:settings",), ("subscriptions:settings",)),
    ("usage_alert", ("subscriptions:settings",), ("subscriptions:settings",)),
    ("subscription_cancelled", ("subscriptions:settings",), ("subscriptions:settings",)),
    ("service_restored", None, ("subscriptions:settings",)),
    ("sso_certificate_expiring", ("sso:settings",), ("sso:settings",)),
    ("deletion_request_received", ("retention:privacy",), ("retention:privacy",)),
    ("primary_email_changed", None, ("accounts:organisation",)),
    ("billing_recipient_confirm", None, ("billing:recipients",)),
    ("invitation", None, ("accounts:users",)),
]


@pytest.mark.parametrize(("template", "in_text", "expected"), CASES)
def test_an_admin_gets_the_page_of_each_emails_action(
    client_for, admin, org, template, in_text, expected
):
    body = f"Open {absolute_url(in_text[0], org.slug, *in_text[1:])}." if in_text else "Hello."
    sent(org, [admin.email], template=template, body=body)

    assert only_link(client_for(admin), org) == path(expected[0], org, *expected[1:])


@pytest.mark.parametrize("template", ["invoice_issued", "payment_receipt"])
def test_an_invoice_email_links_to_its_row_in_invoice_history(client_for, admin, org, template):
    invoices = absolute_url("billing:invoices", org.slug)
    sent(
        org,
        [admin.email],
        template=template,
        subject="Invoice INV-2026-000042 from APPSeCONNECT: $982.77",
        body=f"See {invoices}",
    )
    sent(org, [admin.email], template=template, subject="No number here", body="")

    client = client_for(admin)
    assert links(client, org) == [
        ("No number here", path("billing:invoices", org)),
        (
            "Invoice INV-2026-000042 from APPSeCONNECT: $982.77",
            path("billing:invoices", org) + "?number=INV-2026-000042",
        ),
    ]
    row = client.get(path("billing:invoices", org) + "?number=INV-2026-000042")
    assert row.status_code == 200


def test_a_support_ticket_email_links_to_its_ticket_for_every_role(client_for, org):
    ticket_id = uuid.uuid4()
    for role in ("admin", "billing", "member"):
        user = MembershipFactory(organisation=org, role=role).user
        ticket_url = absolute_url("support:ticket", org.slug, ticket_id)
        sent(org, [user.email], template="support_ticket_reply", body=f"Reply: {ticket_url}")

        assert only_link(client_for(user), org) == path("support:ticket", org, ticket_id)
        OutgoingEmail.objects.all().delete()


@pytest.mark.parametrize(
    ("template", "for_billing", "for_member"),
    [
        ("invoice_issued", "billing:invoices", None),
        ("payment_failed", "billing:payment_method", None),
        ("usage_alert", "subscriptions:settings", None),
        ("usage_forecast", "subscriptions:settings", None),
        # Choose a plan is for Admins: a Billing contact gets the Subscription page.
        ("subscription_ended", "subscriptions:settings", None),
        ("sso_certificate_expiring", None, None),
        ("invitation", None, None),
        ("primary_email_changed", None, None),
        ("deletion_request_done", None, None),
        ("support_ticket_received", "support:tickets", "support:tickets"),
    ],
)
def test_a_link_only_for_roles_that_may_open_the_page(
    client_for, billing_user, member, org, template, for_billing, for_member
):
    sent(org, [billing_user.email, member.email], template=template, body="No link here.")

    for user, expected in ((billing_user, for_billing), (member, for_member)):
        client = client_for(user)
        url = only_link(client, org)
        assert url == (path(expected, org) if expected else None), (template, user.email)
        if url:
            assert client.get(url).status_code == 200


@pytest.mark.parametrize("role", ["admin", "billing", "member"])
def test_no_registered_email_ever_links_a_role_to_a_refused_page(client_for, org, role):
    """Every email kind, with the links of its pages in its text: whatever link a role gets
    opens for that role (never 403)."""
    user = MembershipFactory(organisation=org, role=role).user
    for template, pages in NOTIFICATION_PAGES.items():
        urls = []
        for url_name, *_ in pages:
            try:
                urls.append(absolute_url(url_name, org.slug))
            except NoReverseMatch:  # a page of one object: this test has none to name
                continue
        sent(org, [user.email], template=template, body="\n".join(urls))
    client = client_for(user)
    offered = [url for _subject, url in links(client, org) if url]
    assert offered  # every role gets some links (a Member: the support tickets)
    for url in offered:
        assert client.get(url).status_code in (200, 302), (role, url)


def test_a_link_to_another_organisation_in_the_text_is_never_offered(
    client_for, admin, org, other_org
):
    foreign = absolute_url("billing:confirm_payment", other_org.slug, "INV-2026-000001")
    sent(org, [admin.email], template="payment_action_required", body=f"Confirm: {foreign}")

    # The Confirm payment page of the email's own organisation is not named: Invoice History.
    assert only_link(client_for(admin), org) == path("billing:invoices", org)


def test_a_link_to_another_site_is_never_offered(client_for, admin, org):
    foreign = "https://evil.example" + path("billing:confirm_payment", org, "INV-2026-000001")
    sent(org, [admin.email], template="payment_action_required", body=f"Confirm: {foreign}")

    assert only_link(client_for(admin), org) == path("billing:invoices", org)


def test_a_one_time_link_is_never_offered_not_even_to_its_addressee(client_for, org):
    user = MembershipFactory(organisation=org, role="admin").user
    for template in ("primary_email_verify", "billing_recipient_confirm", "invitation"):
        assert template in SECRET_LINK_TEMPLATES
    token_link = absolute_url("accounts:primary_email_verify", "secret-token")
    sent(org, [user.email], template="primary_email_verify", body=f"Verify: {token_link}")

    url = only_link(client_for(user), org)
    assert url == path("accounts:organisation", org)
    assert "secret-token" not in url


def test_an_email_kind_without_a_page_has_no_link(client_for, admin, org):
    sent(org, [admin.email], template="data_deleted", body=absolute_url("account_login"))

    assert only_link(client_for(admin), org) is None


def test_the_link_is_shown_under_the_entry(client_for, admin, org):
    link = absolute_url("billing:confirm_payment", org.slug, "INV-2026-000003")
    sent(org, [admin.email], template="payment_action_required", body=f"Confirm: {link}.")

    html = client_for(admin).get(reverse("accounts:notifications", args=[org.slug])).content
    expected = path("billing:confirm_payment", org, "INV-2026-000003")
    assert (
        f'<a href="{expected}">Confirm payment<span class="visually-hidden">: '
        "A payment_action_required email</span></a>"
    ) in html.decode()


@pytest.mark.parametrize("role", ["admin", "billing", "member"])
def test_links_cost_no_query_however_many_emails(client_for, org, role):
    user = MembershipFactory(organisation=org, role=role).user
    client = client_for(user)
    client.get(reverse("accounts:notifications", args=[org.slug]))  # saves the session

    def queries():
        with CaptureQueriesContext(connection) as captured:
            response = client.get(reverse("accounts:notifications", args=[org.slug]))
        notifications = response.context["notifications"]
        return len(captured), len(notifications), sum(1 for n in notifications if n.link)

    def send(numbers):
        for n in numbers:
            ticket = absolute_url("support:ticket", org.slug, uuid.uuid4())
            confirm = absolute_url("billing:confirm_payment", org.slug, f"INV-2026-{n:06}")
            sent(org, [user.email, org.primary_email], template="support_ticket_reply", body=ticket)
            sent(org, [user.email], template="payment_action_required", body=confirm)

    send(range(1))
    few, shown_few, linked_few = queries()
    send(range(1, 30))
    many, shown_many, linked_many = queries()
    assert (shown_few, shown_many) == (2, 20)
    # Members get the ticket links only; the others both kinds.
    assert (linked_few, linked_many) == ((1, 10) if role == "member" else (2, 20))
    assert few == many
