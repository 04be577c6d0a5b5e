"""Two-factor sign-in: Security, TOTP setup and removal, recovery codes, the sign-in stage, the
rate limit, audit and email, two tabs, and the ops reset
(docs/architecture.md#decision-two-factor-sign-in-builds-on-allauth-mfa)."""

import re
import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from allauth.account.internal.flows.login import _AUTHENTICATION_METHODS_USER_SESSION_KEY
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
)
from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit import Actor
from accounts.models import AuditEvent, Membership, User
from accounts.two_factor import has_two_factor, totp_activate, two_factor_reset
from support.staff import BILLING as BILLING_STAFF
from support.staff import staff_groups_ensure
from tests.accounts.factories import PASSWORD, OrganisationFactory
from tests.helpers import user_with_role

USER_KEY = _AUTHENTICATION_METHODS_USER_SESSION_KEY
NOW = datetime(2027, 3, 10, 9, 0, 15, tzinfo=UTC)
SECURITY = "/account/security/"


@pytest.fixture(autouse=True)
def _clock(time_machine):
    time_machine.move_to(NOW, tick=False)


def code_at(secret: str, at: datetime = NOW) -> str:
    return format_hotp_value(hotp_value(secret, int(at.timestamp()) // 30))


def recently_signed_in(client, user):
    """A session that signed in with the password just now (allauth asks again after a while)."""
    client.force_login(user)
    session = client.session
    session["account_authentication_methods"] = [
        {"method": "password", "at": time.time(), "reauthenticated": True}
    ]
    session[USER_KEY] = str(user.pk)
    session.save()
    return client


def with_app(user) -> str:
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    RecoveryCodes.activate(user)
    return secret


def recovery_codes(user) -> list[str]:
    return (
        Authenticator.objects.get(user=user, type=Authenticator.Type.RECOVERY_CODES)
        .wrap()
        .get_unused_codes()
    )


def setup_secret(client) -> str:
    page = client.get(reverse("accounts:security_totp_activate"))
    assert page.status_code == 200
    return re.search(r'id="totp-secret"[^>]*value="([A-Z2-7 ]+)"', page.content.decode())[
        1
    ].replace(" ", "")


def actions(user) -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.filter(target_label=user.email)
        .order_by("organisation__slug", "pk")
        .values_list("organisation__slug", "action")
    )


# Security page


def test_security_needs_sign_in(client):
    response = client.get(SECURITY)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_security_is_linked_from_the_organisation_menu(client_for, admin, org):
    page = client_for(admin).get(reverse("portal:overview", args=[org.slug]))
    assert f'<a href="{SECURITY}">Security</a>' in page.content.decode()


def test_security_shows_off_then_on_with_codes_left(client_for, admin):
    client = client_for(admin)
    assert "Set up authenticator app" in client.get(SECURITY).content.decode()
    with_app(admin)
    page = client.get(SECURITY).content.decode()
    assert "An authenticator app is set up." in page
    assert "10 unused recovery codes left" in page


def test_security_query_count_is_constant(client_for, admin, django_assert_max_num_queries):
    client = client_for(admin)
    with_app(admin)
    client.get(SECURITY)  # the session's first use is recorded once (accounts.middleware)
    with CaptureQueriesContext(connection) as few:
        client.get(SECURITY)
    for n in range(3):
        Authenticator.objects.create(
            user=admin, type=Authenticator.Type.WEBAUTHN, data={"name": f"Key {n}"}
        )
    with CaptureQueriesContext(connection) as more:
        client.get(SECURITY)
    assert len(more) == len(few)


# Setup


def test_setup_shows_the_secret_as_text_and_a_qr_code(client, admin):
    recently_signed_in(client, admin)
    page = client.get(reverse("accounts:security_totp_activate")).content.decode()
    assert 'src="data:image/svg+xml;base64,' in page
    secret = setup_secret(client)
    assert len(secret) == 32


def test_setup_asks_to_sign_in_again_after_a_while(client_for, admin):
    response = client_for(admin).get(reverse("accounts:security_totp_activate"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_reauthenticate"))


def test_setup_with_a_wrong_code_is_refused_and_nothing_changes(client, admin, committed):
    recently_signed_in(client, admin)
    secret = setup_secret(client)
    wrong = f"{(int(code_at(secret)) + 1) % 1000000:06d}"
    with committed():
        response = client.post(reverse("accounts:security_totp_activate"), {"code": wrong})
    assert response.status_code == 200
    assert "Incorrect code." in response.content.decode()
    assert not Authenticator.objects.filter(user=admin).exists()
    assert actions(admin) == []
    assert mail.outbox == []


def test_setup_then_codes_once_then_next(client, admin, org, committed):
    recently_signed_in(client, admin)
    invoices = reverse("accounts:users", args=[org.slug])
    client.get(reverse("accounts:security_totp_activate"), {"next": invoices})
    secret = setup_secret(client)
    with committed():
        response = client.post(
            reverse("accounts:security_totp_activate"),
            {"code": code_at(secret), "next": invoices},
        )
    assert response["Location"] == (
        reverse("accounts:security_recovery_codes") + "?next=%2Fo%2Facme%2Fsettings%2Fusers%2F"
    )
    assert has_two_factor(admin)
    page = client.get(response["Location"]).content.decode()
    codes = recovery_codes(admin)
    assert len(codes) == 10
    assert all(code in page for code in codes)
    assert 'download="appseconnect-recovery-codes.txt"' in page.lower()
    assert f'href="{invoices}">I have saved them, continue' in page
    # Shown once: not again.
    again = client.get(reverse("accounts:security_recovery_codes")).content.decode()
    assert not any(code in again for code in codes)
    assert "You have 10 unused recovery codes" in again
    assert actions(admin) == [("acme", "two_factor.app_added")]
    [message] = mail.outbox
    assert message.to == [admin.email]
    assert message.subject == "An authenticator app was added to your account"


def test_security_offers_next_once_two_factor_is_on(client_for, admin, org):
    client = client_for(admin)
    target = reverse("accounts:users", args=[org.slug])
    before = client.get(SECURITY, {"next": target}).content.decode()
    assert f'href="{reverse("accounts:security_totp_activate")}?next=%2Fo%2Facme%2F' in before
    assert f'<a href="{target}">Continue where you were</a>' not in before
    with_app(admin)
    after = client.get(SECURITY, {"next": target}).content.decode()
    assert f'<a href="{target}">Continue where you were</a>' in after


def test_next_elsewhere_is_ignored(client, admin):
    recently_signed_in(client, admin)
    page = client.get(SECURITY, {"next": "https://evil.test/o/acme/"}).content.decode()
    assert "evil.test" not in page


def test_audit_goes_to_every_active_organisation_only(client, admin, org, committed):
    second = OrganisationFactory(name="Second", slug="second")
    left = OrganisationFactory(name="Left", slug="left")
    Membership.objects.create(organisation=second, user=admin, role=Membership.Role.MEMBER)
    Membership.objects.create(
        organisation=left,
        user=admin,
        role=Membership.Role.MEMBER,
        status=Membership.Status.DEACTIVATED,
    )
    recently_signed_in(client, admin)
    secret = setup_secret(client)
    with committed():
        client.post(reverse("accounts:security_totp_activate"), {"code": code_at(secret)})
    assert actions(admin) == [("acme", "two_factor.app_added"), ("second", "two_factor.app_added")]
    assert len(mail.outbox) == 1


def test_second_confirmation_of_the_same_secret_is_a_message(client, admin, committed):
    recently_signed_in(client, admin)
    secret = setup_secret(client)
    with committed():
        client.post(reverse("accounts:security_totp_activate"), {"code": code_at(secret)})
        response = client.post(
            reverse("accounts:security_totp_activate"), {"code": code_at(secret)}, follow=True
        )
    assert "An authenticator app is already set up" in response.content.decode()
    assert Authenticator.objects.filter(user=admin, type="totp").count() == 1
    assert len(actions(admin)) == 1
    assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_two_tabs_confirming_at_once_make_one_app(time_machine):
    org = OrganisationFactory(slug="race")
    user = user_with_role(org, Membership.Role.ADMIN, "race@acme.test")
    secret = generate_totp_secret()

    class Form:
        pass

    form = Form()
    form.secret = secret
    barrier = threading.Barrier(2)
    outcomes = []

    def confirm():
        from django.db import connection as thread_connection
        from django.test import RequestFactory

        request = RequestFactory().post("/")
        request.user = User.objects.get(pk=user.pk)
        from django.contrib.messages.storage.fallback import FallbackStorage
        from django.contrib.sessions.backends.db import SessionStore

        request.session = SessionStore()
        request.session[USER_KEY] = str(user.pk)
        request.session["account_authentication_methods"] = [
            {"method": "password", "at": time.time(), "reauthenticated": True}
        ]
        request._messages = FallbackStorage(request)
        barrier.wait()
        try:
            totp_activate(request, form)
            outcomes.append("ok")
        except Exception as error:  # noqa: BLE001 - the outcome is what the test compares
            outcomes.append(getattr(error, "code", repr(error)))
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=confirm) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["already_active", "ok"]
    assert Authenticator.objects.filter(user=user, type="totp").count() == 1
    assert Authenticator.objects.filter(user=user, type="recovery_codes").count() == 1
    assert list(
        AuditEvent.objects.filter(action="two_factor.app_added").values_list(
            "target_label", flat=True
        )
    ) == ["race@acme.test"]


# Removal


def test_removal_with_a_wrong_code_is_refused_and_nothing_changes(client, admin, committed):
    secret = with_app(admin)
    recently_signed_in(client, admin)
    wrong = f"{(int(code_at(secret)) + 1) % 1000000:06d}"
    with committed():
        response = client.post(reverse("accounts:security_totp_deactivate"), {"code": wrong})
    assert response.status_code == 200
    assert "That code is not valid." in response.content.decode()
    assert has_two_factor(admin)
    assert actions(admin) == []
    assert mail.outbox == []


def test_removal_without_a_code_is_refused(client, admin):
    with_app(admin)
    recently_signed_in(client, admin)
    response = client.post(reverse("accounts:security_totp_deactivate"), {"code": ""})
    assert "This field is required." in response.content.decode()
    assert has_two_factor(admin)


def test_allauths_removal_url_leads_to_ours_and_removes_nothing(client, admin):
    secret = with_app(admin)
    recently_signed_in(client, admin)
    ours = reverse("accounts:security_totp_deactivate")
    assert client.get(reverse("mfa_deactivate_totp"))["Location"] == ours
    posted = client.post(reverse("mfa_deactivate_totp"), {"code": code_at(secret)})
    assert posted["Location"] == ours
    assert has_two_factor(admin)


def test_removal_with_the_current_code(client, admin, committed):
    secret = with_app(admin)
    recently_signed_in(client, admin)
    with committed():
        response = client.post(
            reverse("accounts:security_totp_deactivate"), {"code": code_at(secret)}
        )
    assert response["Location"] == SECURITY
    assert not Authenticator.objects.filter(user=admin).exists()
    assert actions(admin) == [("acme", "two_factor.app_removed")]
    [message] = mail.outbox
    assert message.subject == "The authenticator app was removed from your account"


def test_removal_with_a_recovery_code(client, admin, committed):
    with_app(admin)
    recently_signed_in(client, admin)
    code = recovery_codes(admin)[0]
    with committed():
        client.post(reverse("accounts:security_totp_deactivate"), {"code": code})
    assert not has_two_factor(admin)


# Recovery codes


def test_regenerate_shows_new_codes_once_audits_and_emails(client, admin, committed):
    with_app(admin)
    old = recovery_codes(admin)
    recently_signed_in(client, admin)
    with committed():
        response = client.post(reverse("accounts:security_recovery_codes_regenerate"))
    assert response["Location"] == reverse("accounts:security_recovery_codes")
    new = recovery_codes(admin)
    assert set(new).isdisjoint(old)
    page = client.get(response["Location"]).content.decode()
    assert all(code in page for code in new)
    assert actions(admin) == [("acme", "two_factor.recovery_codes_regenerated")]
    [message] = mail.outbox
    assert message.subject == "New recovery codes were generated for your account"


def test_regenerate_without_a_second_factor_is_refused(client, admin):
    recently_signed_in(client, admin)
    response = client.post(reverse("accounts:security_recovery_codes_regenerate"), follow=True)
    assert "Set up an authenticator app or a security key first." in response.content.decode()
    assert not Authenticator.objects.filter(user=admin).exists()


# Sign-in stage


def password_sign_in(client, user):
    return client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})


def test_password_sign_in_asks_for_the_code(client, admin):
    secret = with_app(admin)
    response = password_sign_in(client, admin)
    assert response["Location"] == reverse("mfa_authenticate")
    page = client.get(reverse("mfa_authenticate"))
    assert page.status_code == 200
    assert "_auth_user_id" not in client.session
    done = client.post(reverse("mfa_authenticate"), {"code": code_at(secret)})
    assert done.status_code == 302
    assert int(client.session["_auth_user_id"]) == admin.pk


def test_reused_code_is_refused(admin):
    secret = with_app(admin)
    first, second = Client(), Client()
    password_sign_in(first, admin)
    first.post(reverse("mfa_authenticate"), {"code": code_at(secret)})
    assert int(first.session["_auth_user_id"]) == admin.pk
    password_sign_in(second, admin)
    response = second.post(reverse("mfa_authenticate"), {"code": code_at(secret)})
    assert response.status_code == 200
    assert "Incorrect code." in response.content.decode()
    assert "_auth_user_id" not in second.session


def test_five_wrong_codes_lock_even_the_right_one(client, admin):
    secret = with_app(admin)
    password_sign_in(client, admin)
    wrong = f"{(int(code_at(secret)) + 1) % 1000000:06d}"
    for _ in range(5):
        client.post(reverse("mfa_authenticate"), {"code": wrong})
    response = client.post(reverse("mfa_authenticate"), {"code": code_at(secret)})
    assert "_auth_user_id" not in client.session
    assert "Too many failed" in response.content.decode()


def test_recovery_code_signs_in_once(admin):
    with_app(admin)
    code = recovery_codes(admin)[0]
    first, second = Client(), Client()
    password_sign_in(first, admin)
    first.post(reverse("mfa_authenticate"), {"code": code})
    assert int(first.session["_auth_user_id"]) == admin.pk
    password_sign_in(second, admin)
    second.post(reverse("mfa_authenticate"), {"code": code})
    assert "_auth_user_id" not in second.session
    assert len(recovery_codes(admin)) == 9


# Tenancy: a user only ever touches their own authenticators.


def test_another_users_security_key_cannot_be_removed(client, admin, outsider):
    with_app(outsider)
    key = Authenticator.objects.create(
        user=outsider, type=Authenticator.Type.WEBAUTHN, data={"name": "Theirs"}
    )
    recently_signed_in(client, admin)
    response = client.post(reverse("mfa_remove_webauthn", args=[key.pk]))
    assert response.status_code == 404
    assert Authenticator.objects.filter(pk=key.pk).exists()
    assert "Theirs" not in client.get(SECURITY).content.decode()


def test_security_key_pages_and_begin_options(client, admin):
    # The WebAuthn ceremony needs an authenticator device; what runs here is the page and the
    # options the browser's navigator.credentials.create() would get.
    recently_signed_in(client, admin)
    assert client.get(reverse("mfa_list_webauthn")).status_code == 200
    page = client.get(reverse("mfa_add_webauthn")).content.decode()
    assert '"creation_options"' in page
    assert '"name": "admin@acme.test"' in page
    assert '<script src="/static/mfa/js/webauthn.js"></script>' in page


def test_removing_a_security_key_audits_and_emails(client, admin, committed):
    with_app(admin)
    key = Authenticator.objects.create(
        user=admin, type=Authenticator.Type.WEBAUTHN, data={"name": "Mine"}
    )
    recently_signed_in(client, admin)
    with committed():
        response = client.post(reverse("mfa_remove_webauthn", args=[key.pk]))
    assert response.status_code == 302
    assert not Authenticator.objects.filter(pk=key.pk).exists()
    assert has_two_factor(admin)  # the app is still there
    assert actions(admin) == [("acme", "two_factor.security_key_removed")]
    [message] = mail.outbox
    assert message.subject == "A security key was removed from your account"


def test_has_two_factor_is_one_query(admin, django_assert_num_queries):
    with_app(admin)
    with django_assert_num_queries(1):
        assert has_two_factor(admin) is True


def test_next_survives_the_password_prompt(client_for, admin, org):
    target = reverse("accounts:users", args=[org.slug])
    response = client_for(admin).get(reverse("accounts:security_totp_activate"), {"next": target})
    setup = reverse("accounts:security_totp_activate") + "?" + urlencode({"next": target})
    assert response["Location"] == (
        reverse("account_reauthenticate") + "?" + urlencode({"next": setup})
    )


# Ops reset


def test_reset_removes_everything_ends_sessions_audits_with_reason_and_emails(
    admin, org, committed
):
    with_app(admin)
    epoch = admin.session_epoch
    ops = User.objects.create_superuser(email="ops@example.test", password="x-long-password-1")
    with committed():
        removed = two_factor_reset(
            user=admin, actor=Actor(user=ops), reason=" Lost phone, ticket checked ", now=NOW
        )
    assert removed == 2
    assert not Authenticator.objects.filter(user=admin).exists()
    admin.refresh_from_db()
    assert admin.session_epoch == epoch + 1
    event = AuditEvent.objects.get(action="two_factor.reset_by_support")
    assert (event.organisation, event.actor, event.changes) == (
        org,
        ops,
        {"reason": {"old": None, "new": "Lost phone, ticket checked"}},
    )
    [message] = mail.outbox
    assert message.subject == "Support reset your two-factor sign-in"
    assert "Set up two-factor sign-in again" in message.body


def test_reset_needs_a_reason(admin):
    with_app(admin)
    from core.errors import ServiceError

    with pytest.raises(ServiceError, match="Give a reason"):
        two_factor_reset(user=admin, actor=Actor(user=None), reason="  ", now=NOW)
    assert has_two_factor(admin)


def test_admin_action_asks_a_reason_then_resets(client, admin, committed):
    with_app(admin)
    ops = User.objects.create_superuser(email="ops@example.test", password="x-long-password-1")
    client.force_login(ops)
    url = reverse("admin:accounts_user_changelist")
    page = client.post(url, {"action": "reset_two_factor", "_selected_action": [admin.pk]})
    assert "Reset two-factor sign-in" in page.content.decode()
    assert has_two_factor(admin)
    empty = client.post(
        url, {"action": "reset_two_factor", "_selected_action": [admin.pk], "apply": "1"}
    )
    assert "This field is required." in empty.content.decode()
    assert has_two_factor(admin)
    with committed():
        client.post(
            url,
            {
                "action": "reset_two_factor",
                "_selected_action": [admin.pk],
                "apply": "1",
                "reason": "Lost phone",
            },
        )
    assert not has_two_factor(admin)
    change = client.get(reverse("admin:accounts_user_change", args=[admin.pk])).content.decode()
    assert "2FA: off" in change


def test_user_page_shows_facts_never_secrets(client, admin):
    secret = with_app(admin)
    ops = User.objects.create_superuser(email="ops@example.test", password="x-long-password-1")
    client.force_login(ops)
    page = client.get(reverse("admin:accounts_user_change", args=[admin.pk])).content.decode()
    assert "2FA: on (authenticator app, 10 recovery codes left)" in page
    assert secret not in page
    assert not any(code in page for code in recovery_codes(admin))


def test_billing_staff_may_not_reset(client, admin):
    with_app(admin)
    staff = User.objects.create_user(email="staff@example.test", password="x-long-password-1")
    staff.is_staff = True
    staff.save()
    staff_groups_ensure()
    staff.groups.add(Group.objects.get(name=BILLING_STAFF))
    client.force_login(staff)
    url = reverse("admin:accounts_user_changelist")
    assert 'value="reset_two_factor"' not in client.get(url).content.decode()
    client.post(
        url,
        {"action": "reset_two_factor", "_selected_action": [admin.pk], "apply": "1", "reason": "x"},
    )
    assert has_two_factor(admin)
    assert not AuditEvent.objects.filter(action="two_factor.reset_by_support").exists()


def test_ops_never_get_allauths_authenticator_admin():
    from django.contrib import admin as django_admin

    assert not django_admin.site.is_registered(Authenticator)


# allauth's own management pages lead to ours (accounts.middleware).


def test_allauths_management_pages_lead_to_ours_keeping_next_and_changing_nothing(client, admin):
    recently_signed_in(client, admin)
    page = client.get(reverse("mfa_activate_totp"), {"next": "/o/acme/"})
    assert page.status_code == 302
    assert page["Location"] == reverse("accounts:security_totp_activate") + "?next=%2Fo%2Facme%2F"
    secret = setup_secret(client)
    posted = client.post(reverse("mfa_activate_totp"), {"code": code_at(secret)})
    assert posted["Location"] == reverse("accounts:security_totp_activate")
    assert not Authenticator.objects.filter(user=admin).exists()
    assert client.get(reverse("mfa_index"))["Location"] == reverse("accounts:security")
