import re

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.urls import reverse

from accounts.models import AuditEvent, Membership, Organisation, User
from tests.accounts.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

SIGNUP = {
    "full_name": "Sam Founder",
    "email": "Sam@NewCo.test",
    "password1": "a-long-fine-passphrase",
    "organisation_name": "NewCo Integrations",
}


def link_in(message, path_prefix):
    match = re.search(rf"https?://[^/\s]+({path_prefix}[^\s]+)", message.body)
    assert match, message.body
    return match.group(1)


def test_signup_creates_user_and_organisation_with_them_as_admin(client, committed):
    with committed():
        response = client.post(reverse("account_signup"), SIGNUP)
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    user = User.objects.get()
    assert (user.email, user.full_name) == ("sam@newco.test", "Sam Founder")
    organisation = Organisation.objects.get()
    assert (organisation.name, organisation.slug, organisation.primary_email) == (
        "NewCo Integrations",
        "newco-integrations",
        "sam@newco.test",
    )
    membership = Membership.objects.get()
    assert (membership.user, membership.role) == (user, "admin")
    assert AuditEvent.objects.filter(
        organisation=organisation, action="organisation.created"
    ).exists()
    # Email verification is mandatory: not signed in until the link is used.
    assert client.get(reverse("accounts:home")).status_code == 302
    [message] = mail.outbox
    assert message.to == ["sam@newco.test"]
    assert "APPSeCONNECT" in message.subject


def test_verifying_the_email_signs_in_and_opens_the_organisation(client, committed):
    with committed():
        client.post(reverse("account_signup"), SIGNUP)
    link = link_in(mail.outbox[0], "/accounts/confirm-email/")
    response = client.post(link)
    assert response.status_code == 302
    assert EmailAddress.objects.get().verified is True
    home = client.get(reverse("accounts:home"))
    assert home["Location"] == reverse("portal:overview", args=["newco-integrations"])


def test_two_organisations_with_the_same_name_get_different_slugs(client, committed):
    client.post(reverse("account_signup"), SIGNUP)
    client.logout()
    client.post(reverse("account_signup"), {**SIGNUP, "email": "other@newco.test"})
    slugs = sorted(Organisation.objects.values_list("slug", flat=True))
    assert slugs[0] == "newco-integrations"
    assert re.fullmatch(r"newco-integrations-[0-9a-f]{6}", slugs[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"organisation_name": ""}, "This field is required."),
        ({"organisation_name": "x" * 101}, "at most 100 characters"),
        ({"email": "nope"}, "Enter a valid email address."),
        ({"password1": "short"}, "This password is too short"),
    ],
)
def test_bad_signup_is_refused_and_creates_nothing(client, change, message):
    response = client.post(reverse("account_signup"), {**SIGNUP, **change})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert (User.objects.count(), Organisation.objects.count()) == (0, 0)


def test_signup_with_a_taken_email_is_refused(client, committed):
    UserFactory(email="sam@newco.test")
    with committed():
        response = client.post(reverse("account_signup"), SIGNUP)
    # allauth does not reveal that the account exists; it emails the owner instead.
    assert Organisation.objects.count() == 0
    assert User.objects.count() == 1
    assert response.status_code in (200, 302)


def test_unverified_email_cannot_sign_in(client, committed):
    UserFactory(email="new@example.test", verified=False)
    EmailAddress.objects.create(
        user=User.objects.get(email="new@example.test"),
        email="new@example.test",
        verified=False,
        primary=True,
    )
    with committed():
        response = client.post(
            reverse("account_login"), {"login": "new@example.test", "password": PASSWORD}
        )
    assert response["Location"] == reverse("account_email_verification_sent")
    assert "_auth_user_id" not in client.session


def test_login_is_rate_limited_after_repeated_failures(client):
    UserFactory(email="target@example.test")
    login = reverse("account_login")
    for _ in range(5):
        response = client.post(login, {"login": "target@example.test", "password": "wrong-pass-1"})
        assert response.status_code == 200
        assert "The email address and/or password you specified are not correct." in (
            response.content.decode()
        )
    # Even the right password is refused while the account is locked out.
    blocked = client.post(login, {"login": "target@example.test", "password": PASSWORD})
    assert "Too many failed login attempts. Try again later." in blocked.content.decode()
    assert "_auth_user_id" not in client.session


def test_password_reset_sends_a_working_link(client, committed):
    user = UserFactory(email="forgot@example.test")
    with committed():
        client.post(reverse("account_reset_password"), {"email": "forgot@example.test"})
    [message] = mail.outbox
    link = link_in(message, "/accounts/password/reset/key/")
    page = client.get(link, follow=True)
    assert page.status_code == 200
    form_url = page.redirect_chain[-1][0] if page.redirect_chain else link
    response = client.post(
        form_url, {"password1": "brand-new-passphrase", "password2": "brand-new-passphrase"}
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password("brand-new-passphrase")


def test_user_with_no_active_organisation_sees_why(client_for, db):
    user = UserFactory()
    response = client_for(user).get(reverse("accounts:home"))
    assert response.status_code == 200
    assert "You are not an active user of any organisation." in response.content.decode()
