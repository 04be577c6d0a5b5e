"""Notifications: every email sent to an organisation is listed in the portal.

Who sees what is the rule in accounts.selectors.notification_rows: everyone their own emails,
Billing contacts also the emails sent to the primary email (with the billing recipients),
Admins all; a secret-link body only for its addressee.
"""

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.template.loader import get_template
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.context_processors import portal
from accounts.emails import email_queue, email_send
from accounts.models import Membership, OutgoingEmail, PrimaryEmailChange
from accounts.selectors import SECRET_LINK_TEMPLATES
from accounts.services import notifications_mark_seen
from tests.accounts.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def page_url(org, page=None):
    url = reverse("accounts:notifications", args=[org.slug])
    return f"{url}?page={page}" if page else url


def sent(organisation, to, *, subject="Invoice INV-2026-000001 issued", at=None, **fields):
    """One email to `to` (a list of addresses) as email_send records it: a row per recipient."""
    message_id = uuid.uuid4()
    fields = {"template": "invoice_issued", "body_text": "Your invoice is ready.", **fields}
    for address in to:
        OutgoingEmail.objects.create(
            organisation=organisation,
            message_id=message_id,
            to_email=address,
            subject=subject,
            created_at=at or timezone.now(),
            **fields,
        )
    return message_id


def listed(client, org, page=None):
    """{subject: [recipients]} of the page, in page order."""
    response = client.get(page_url(org, page))
    assert response.status_code == 200
    return {n.subject: n.recipients for n in response.context["notifications"]}


def unread_marker(client, org) -> str | None:
    """The unread count in the top bar (read off the dashboard), or None when there is none."""
    html = client.get(reverse("portal:overview", args=[org.slug])).content.decode()
    match = re.search(
        r'>Notifications <span class="unread-count">([^<]+)'
        r'<span class="visually-hidden"> unread</span></span></a>',
        html,
    )
    assert ">Notifications" in html  # the link itself is always there
    return match.group(1) if match else None


# Grouping -------------------------------------------------------------------------------


def test_one_email_send_to_several_people_is_one_notification(client_for, admin, billing_user, org):
    rows = email_send(
        template="service_restored",
        to=[org.primary_email, "admin@acme.test", "billing@acme.test"],
        context={},
        organisation=org,
    )
    assert len(rows) == 3
    assert len({row.message_id for row in rows}) == 1
    # A second send of the same email is another notification, even with the same subject.
    email_send(template="service_restored", to="admin@acme.test", context={}, organisation=org)

    response = client_for(admin).get(page_url(org))

    notifications = response.context["notifications"]
    assert [n.recipients for n in notifications] == [
        ["admin@acme.test"],
        [org.primary_email, "admin@acme.test", "billing@acme.test"],
    ]
    assert notifications[0].subject == notifications[1].subject == rows[0].subject
    html = response.content.decode()
    subject_lines = re.findall(r'<span class="notification-subject">(.*?)</span>\n', html)
    assert [line.rsplit("</span> ", 1)[-1] for line in subject_lines] == [rows[0].subject] * 2


def test_email_queue_calls_without_a_message_id_are_separate_messages(org):
    first = email_queue(
        to="a@acme.test", subject="S", body_text="B", template="t", organisation=org
    )
    second = email_queue(
        to="b@acme.test", subject="S", body_text="B", template="t", organisation=org
    )
    shared = uuid.uuid4()
    third = email_queue(
        to="c@acme.test",
        subject="S",
        body_text="B",
        template="t",
        organisation=org,
        message_id=shared,
    )
    assert first.message_id != second.message_id
    assert third.message_id == shared


# Who sees what --------------------------------------------------------------------------


@pytest.fixture
def mailbox(org, other_org, admin, billing_user, member):
    """One email of each kind the rule tells apart, oldest first."""
    PrimaryEmailChange.objects.create(
        organisation=org,
        old_email="Finance-Old@acme.test",
        new_email=org.primary_email,
        status=PrimaryEmailChange.Status.VERIFIED,
        token_hash="x" * 64,
        expires_at=timezone.now(),
    )
    start = timezone.now() - timedelta(hours=1)
    at = iter(start + timedelta(minutes=n) for n in range(10))
    sent(
        org, ["finance-old@acme.test", "admin@acme.test"], subject="Before the change", at=next(at)
    )
    sent(
        org,
        [org.primary_email, "admin@acme.test", "billing@acme.test"],
        subject="Invoice issued",
        at=next(at),
    )
    sent(org, ["admin@acme.test"], subject="SSO certificate expiring", at=next(at))
    sent(org, ["Member@Acme.test"], subject="Your deletion request", at=next(at))
    sent(org, [org.primary_email, "member@acme.test"], subject="Shared notice", at=next(at))
    sent(org, ["billing@acme.test"], subject="Your ticket", at=next(at))
    # Never on Acme's page: Globex's email to Acme's people, and allauth's (no organisation).
    sent(other_org, ["admin@acme.test", "billing@acme.test", org.primary_email], subject="Globex")
    sent(None, ["admin@acme.test"], subject="Reset your password", template="x")


def test_an_admin_sees_every_email_of_the_organisation(client_for, admin, org, mailbox):
    assert listed(client_for(admin), org) == {
        "Your ticket": ["billing@acme.test"],
        "Shared notice": [org.primary_email, "member@acme.test"],
        "Your deletion request": ["member@acme.test"],
        "SSO certificate expiring": ["admin@acme.test"],
        "Invoice issued": [org.primary_email, "admin@acme.test", "billing@acme.test"],
        "Before the change": ["finance-old@acme.test", "admin@acme.test"],
    }


def test_a_billing_contact_sees_their_own_and_the_primary_emails(
    client_for, billing_user, org, mailbox
):
    assert listed(client_for(billing_user), org) == {
        "Your ticket": ["billing@acme.test"],
        # A Member is not a billing recipient: their address is not shown.
        "Shared notice": [org.primary_email],
        "Invoice issued": [org.primary_email, "admin@acme.test", "billing@acme.test"],
        # Sent to the primary email it had before a verified change.
        "Before the change": ["finance-old@acme.test", "admin@acme.test"],
    }


def test_a_member_sees_only_emails_addressed_to_them(client_for, member, org, mailbox):
    assert listed(client_for(member), org) == {
        "Shared notice": ["member@acme.test"],
        "Your deletion request": ["member@acme.test"],
    }


def test_another_organisations_emails_never_show(client_for, outsider, other_org, org, mailbox):
    client = client_for(outsider)
    assert client.get(page_url(org)).status_code == 404
    assert not Membership.objects.filter(notifications_seen_at__isnull=False).exists()
    # On its own page Globex's Admin sees Globex's one email, none of Acme's.
    assert listed(client, other_org) == {
        "Globex": ["admin@acme.test", "billing@acme.test", org.primary_email]
    }


def test_the_page_opens_for_every_role_from_the_top_bar(
    client_for, admin, billing_user, member, org
):
    for user in (admin, billing_user, member):
        response = client_for(user).get(page_url(org))
        assert response.status_code == 200
        html = response.content.decode()
        assert f'<a href="{page_url(org)}" aria-current="page">Notifications</a>' in html
        assert "No notifications yet." in html


# Secret links ---------------------------------------------------------------------------


def test_invitation_links_are_only_for_the_invitee(client_for, admin, billing_user, org, committed):
    with committed():
        client_for(admin).post(
            reverse("accounts:user_invite", args=[org.slug]),
            {"email": "new@acme.test", "role": "member"},
        )
    invitation = OutgoingEmail.objects.get(template="invitation")
    link = re.search(r"/invitations/[^\s/]+/", invitation.body_text).group(0)

    response = client_for(admin).get(page_url(org))
    (notification,) = response.context["notifications"]
    assert (notification.subject, notification.recipients) == (
        invitation.subject,
        ["new@acme.test"],
    )
    assert notification.body is None
    html = response.content.decode()
    assert invitation.subject in html
    assert link not in html
    assert "holds a one-time link for new@acme.test" in html

    # Once the invitee has joined, the invitation is theirs to read.
    MembershipFactory(organisation=org, user=UserFactory(email="new@acme.test"))
    invitee = Membership.objects.get(user__email="new@acme.test").user
    html = client_for(invitee).get(page_url(org)).content.decode()
    assert link in html


def test_primary_email_verification_link_is_hidden_from_everyone_signed_in(
    client_for, admin, billing_user, org, committed
):
    with committed():
        client_for(admin).post(
            reverse("accounts:organisation_primary_email", args=[org.slug]),
            {"new_email": "billing@acme.test"},  # the Billing contact's own address
        )
    verify = OutgoingEmail.objects.get(template="primary_email_verify")
    link = re.search(r"/verify-primary-email/[^\s/]+/", verify.body_text).group(0)
    notice = OutgoingEmail.objects.get(template="primary_email_change_requested")

    admin_page = client_for(admin).get(page_url(org))
    by_subject = {n.subject: n for n in admin_page.context["notifications"]}
    assert by_subject[verify.subject].body is None
    assert by_subject[notice.subject].body == notice.body_text.strip()
    assert link not in admin_page.content.decode()
    # The addressee reads their link.
    assert link in client_for(billing_user).get(page_url(org)).content.decode()


def test_secret_link_templates_name_real_email_templates():
    ours = {name for name in SECRET_LINK_TEMPLATES if not name.startswith("account/")}
    assert ours == {"invitation", "primary_email_verify", "billing_recipient_confirm"}
    emails = Path(settings.BASE_DIR) / "templates" / "emails"
    for name in ours:
        assert (emails / name / "body.txt").is_file(), name
    for name in SECRET_LINK_TEMPLATES - ours:
        get_template(f"{name}_message.txt")  # allauth's: raises if the name is wrong


def test_the_body_is_shown_as_text_never_as_html(client_for, admin, org):
    sent(
        org,
        ["admin@acme.test"],
        subject="<b>Bold</b> subject",
        body_text='Hello <script>alert("x")</script>\n<a href="https://evil.test">Pay here</a>',
        body_html='<script>alert("html")</script>',
    )
    html = client_for(admin).get(page_url(org)).content.decode()
    assert "&lt;b&gt;Bold&lt;/b&gt; subject" in html
    assert "Hello &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    # The page's own scripts come from our static files; none comes from the message.
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == ['<script src="/static/js/menu.js" defer>'], scripts
    assert 'href="https://evil.test"' not in html
    assert "alert(&quot;html&quot;)" not in html  # the HTML body is never used


def test_dates_show_in_the_organisations_time_zone(client_for, admin, org):
    org.time_zone = "Asia/Tokyo"
    org.save(update_fields=["time_zone"])
    sent(org, ["admin@acme.test"], at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC))
    html = client_for(admin).get(page_url(org)).content.decode()
    assert '<time datetime="2026-03-02T08:30:00+09:00">2 Mar 2026, 08:30</time>' in html
    assert "Times in Asia/Tokyo." in html


# Unread ---------------------------------------------------------------------------------


def seen_by(user):
    return Membership.objects.get(user=user).notifications_seen_at


def test_unread_count_shows_in_the_top_bar_and_resets_on_visit(client_for, billing_user, org):
    client = client_for(billing_user)
    assert unread_marker(client, org) is None
    sent(org, [org.primary_email, "admin@acme.test", "billing@acme.test"], subject="One")
    sent(org, ["billing@acme.test"], subject="Two")
    sent(org, ["admin@acme.test"], subject="Admin only")  # not the Billing contact's to see
    assert unread_marker(client, org) == "2"

    first_visit = client.get(page_url(org))
    assert [n.is_new for n in first_visit.context["notifications"]] == [True, True]
    assert 'class="unread-count"' not in first_visit.content.decode()
    seen_at = seen_by(billing_user)
    assert seen_at is not None
    assert unread_marker(client, org) is None

    sent(org, ["billing@acme.test"], subject="Three")
    assert unread_marker(client, org) == "1"
    second_visit = client.get(page_url(org))
    assert [(n.subject, n.is_new) for n in second_visit.context["notifications"]] == [
        ("Three", True),
        ("Two", False),
        ("One", False),
    ]
    assert seen_by(billing_user) > seen_at


def test_unread_is_per_user_and_per_organisation(client_for, admin, billing_user, org, other_org):
    MembershipFactory(organisation=other_org, user=admin, role=Membership.Role.ADMIN)
    sent(org, [org.primary_email], subject="Acme's")
    sent(other_org, [other_org.primary_email], subject="Globex's")
    client_for(admin).get(page_url(org))
    assert unread_marker(client_for(admin), org) is None
    assert unread_marker(client_for(admin), other_org) == "1"
    assert unread_marker(client_for(billing_user), org) == "1"


def test_the_read_mark_never_moves_back(member):
    membership = Membership.objects.get(user=member)
    later = timezone.now()
    notifications_mark_seen(membership=membership, now=later)
    # A request that started earlier finishes last.
    notifications_mark_seen(membership=membership, now=later - timedelta(seconds=5))
    assert seen_by(member) == later


def test_emails_from_before_joining_are_not_unread(client_for, org):
    newcomer = UserFactory(email="new@acme.test")
    sent(org, ["new@acme.test"], subject="Invitation", at=timezone.now() - timedelta(days=1))
    MembershipFactory(organisation=org, user=newcomer)
    sent(org, ["new@acme.test"], subject="Welcome")
    client = client_for(newcomer)
    assert unread_marker(client, org) == "1"
    assert [(n.subject, n.is_new) for n in client.get(page_url(org)).context["notifications"]] == [
        ("Welcome", True),
        ("Invitation", False),
    ]


def test_more_than_99_unread_shows_99_plus(client_for, member, org):
    for n in range(100):
        sent(org, ["member@acme.test"], subject=f"Email {n}")
    assert unread_marker(client_for(member), org) == "99+"


# Pages and query counts -----------------------------------------------------------------


def test_paginated_newest_first(client_for, admin, org):
    start = timezone.now() - timedelta(days=1)
    for n in range(25):
        sent(
            org,
            [org.primary_email, "admin@acme.test"],
            subject=f"Email {n}",
            at=start + timedelta(minutes=n),
        )
    client = client_for(admin)
    assert list(listed(client, org)) == [f"Email {n}" for n in range(24, 4, -1)]
    assert list(listed(client, org, page=2)) == [f"Email {n}" for n in range(4, -1, -1)]
    html = client.get(page_url(org, page=2)).content.decode()
    assert "Page 2 of 2" in html


@pytest.mark.parametrize("role", ["admin", "billing", "member"])
def test_the_page_runs_the_same_queries_for_few_and_many_emails(client_for, org, role):
    user = MembershipFactory(organisation=org, role=role).user
    addresses = [org.primary_email, user.email, "admin@acme.test"]

    client = client_for(user)
    client.get(page_url(org))  # the first visit saves the session: not what is measured

    def queries():
        with CaptureQueriesContext(connection) as captured:
            response = client.get(page_url(org))
        assert response.status_code == 200
        return len(captured), len(response.context["notifications"])

    for n in range(2):
        sent(org, addresses, subject=f"Email {n}")
    few, shown_few = queries()
    for n in range(2, 60):
        sent(org, addresses, subject=f"Email {n}")
    many, shown_many = queries()
    assert (shown_few, shown_many) == (2, 20)
    assert few == many


def test_the_marker_is_one_query_whatever_the_mailbox(client_for, admin, org):
    for n in range(30):
        sent(org, [org.primary_email, "admin@acme.test"], subject=f"Email {n}")
    client = client_for(admin)
    with CaptureQueriesContext(connection) as captured:
        html = client.get(reverse("portal:overview", args=[org.slug])).content.decode()
    assert '<span class="unread-count">30<span class="visually-hidden"> unread' in html
    outbox_queries = [q for q in captured if "accounts_outgoingemail" in q["sql"]]
    assert len(outbox_queries) == 1


def test_the_marker_costs_nothing_when_the_top_bar_is_not_rendered(admin, org):
    request = RequestFactory().get("/")
    request.user = admin
    request.membership = Membership.objects.select_related("organisation").get(user=admin)
    request.organisation = request.membership.organisation
    with CaptureQueriesContext(connection) as captured:
        context = portal(request)
    assert len(captured) == 0
    with CaptureQueriesContext(connection) as captured:
        assert int(str(context["notifications_unread"])) == 0
    assert len(captured) == 1


def test_the_page_only_reads(client_for, member, org):
    assert client_for(member).post(page_url(org)).status_code == 405
    assert seen_by(member) is None
