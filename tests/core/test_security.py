"""Security headers and the CSP, production settings, password rules and
rate limits (core/security.py, core/ratelimit.py)."""

import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import time_machine
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import Invitation, Membership, Organisation, User
from core import ratelimit
from core.security import header_value
from devkit.saml_idp import TestIdP
from sso import configuration as sso_configuration
from sso.models import SsoRequest
from tests.accounts.factories import PASSWORD, InvitationFactory, UserFactory
from tests.subscriptions.factories import SubscriptionFactory, plan

pytestmark = pytest.mark.django_db

LOCALSTRIPE_JS = "http://127.0.0.1:58420/js.stripe.com/v3/"
DEV_CSP = (
    "default-src 'self'; script-src 'self' http://127.0.0.1:58420; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self' http://127.0.0.1:58420; frame-src 'none'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
PRODUCTION_CSP = (
    "default-src 'self'; script-src 'self' https://js.stripe.com https://*.js.stripe.com; "
    "style-src 'self'; img-src 'self' data:; connect-src 'self' https://api.stripe.com; "
    "frame-src https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# A moment 20 s into a minute (and into a 10-minute window): the Retry-After values are exact.
FROZEN = datetime(2026, 11, 27, 9, 0, 20, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _stripe_js(settings):
    settings.STRIPE_JS_URL = LOCALSTRIPE_JS


def directives(response) -> dict[str, str]:
    policy = response["Content-Security-Policy"]
    return dict(part.split(" ", 1) for part in policy.split("; "))


def assert_security_headers(response):
    assert response["Content-Security-Policy"] == DEV_CSP
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


# Headers and the CSP --------------------------------------------------------------------------


def test_portal_login_and_admin_pages_carry_the_security_headers(client, client_for, admin, org):
    login = client.get(reverse("account_login"))
    assert login.status_code == 200
    assert_security_headers(login)

    dashboard = client_for(admin).get(reverse("portal:overview", args=[org.slug]))
    assert dashboard.status_code == 200
    assert_security_headers(dashboard)

    ops = UserFactory(email="ops@example.test", is_staff=True, is_superuser=True)
    admin_index = client_for(ops).get("/admin/")
    assert admin_index.status_code == 200
    assert_security_headers(admin_index)


def test_no_inline_script_is_allowed_and_the_card_page_may_load_stripe_js(
    client_for, admin, org, localstripe
):
    SubscriptionFactory(organisation=org)
    response = client_for(admin).get(reverse("billing:payment_method", args=[org.slug]))
    assert response.status_code == 200
    body = response.content.decode()
    assert f'<script src="{LOCALSTRIPE_JS}"></script>' in body
    policy = directives(response)
    assert policy["script-src"] == "'self' http://127.0.0.1:58420"
    # localstripe's Stripe.js calls the API on the origin it came from.
    assert policy["connect-src"] == "'self' http://127.0.0.1:58420"
    assert "unsafe" not in response["Content-Security-Policy"]
    # Nothing inline for the policy to refuse.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", body)
    assert not re.search(r"\son[a-z]+=|\sstyle=|<style", body)


def test_real_stripe_gets_its_script_frame_and_api_origins(settings):
    settings.STRIPE_JS_URL = "https://js.stripe.com/v3/"
    assert header_value() == PRODUCTION_CSP


# The documents WeasyPrint renders (invoices, credit notes): their styles stay inline.
PDF_TEMPLATES = (
    "billing/document_pdf_base.html",
    "billing/invoice_pdf.html",
    "billing/credit_note_pdf.html",
)


def test_templates_have_no_inline_scripts_styles_or_event_handlers():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "templates")
    offenders = []
    for folder, _dirs, files in os.walk(root):
        if os.path.relpath(folder, root).startswith("emails"):
            continue  # emails are read in mail clients, not served with our CSP
        for name in files:
            path = os.path.join(folder, name)
            if path.endswith(PDF_TEMPLATES):
                continue  # WeasyPrint renders them to PDF; they are never served as HTML
            with open(path, encoding="utf-8") as template:
                text = template.read()
            # A JSON data block (type="application/json", as json_script writes) is data the
            # browser never runs: allauth's security-key pages hand their element ids over so.
            if re.search(
                r'<script(?![^>]*\b(?:src=|type="application/json"))[^>]*>'
                r"|<style|\sstyle=|\son[a-z]+=|javascript:",
                text,
            ):
                offenders.append(os.path.relpath(path, root))
    assert offenders == []


def enterprise_with_idp(org, admin):
    SubscriptionFactory(organisation=org, plan=plan("enterprise"))
    org.refresh_from_db()
    idp = TestIdP()
    sso_configuration.idp_configure(
        organisation=org,
        actor=Actor(user=admin),
        idp_type="okta",
        metadata_url="",
        metadata_xml=idp.metadata(),
        now=timezone.now(),
    )
    return idp


def test_sso_pages_may_send_their_form_to_the_idp_and_only_they(
    client, client_for, admin, org, settings
):
    idp = enterprise_with_idp(org, admin)
    idp_origin = re.match(r"https?://[^/]+", idp.sso_url).group(0)

    settings_page = client_for(admin).get(reverse("sso:settings", args=[org.slug]))
    assert directives(settings_page)["form-action"] == f"'self' {idp_origin}"
    test_page = client.get(reverse("sso:test", args=[org.slug]))
    assert directives(test_page)["form-action"] == f"'self' {idp_origin}"
    # Sign in with SSO finds the IdP from the email typed in: any https address, and http
    # too where development IdPs are allowed.
    client.logout()
    sign_in = client.get(reverse("sso:sign_in"))
    assert directives(sign_in)["form-action"] == "'self' https: http:"
    settings.SSO_METADATA_ALLOW_PRIVATE_URLS = False
    sign_in = client.get(reverse("sso:sign_in"))
    assert directives(sign_in)["form-action"] == "'self' https:"
    assert directives(client.get(reverse("account_login")))["form-action"] == "'self'"


def test_django_debug_pages_keep_their_inline_styles_in_development(client, settings):
    settings.DEBUG = True
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "Content-Security-Policy" not in response


# Production settings (a subprocess: the settings module reads the environment) ----------------

PRODUCTION = {
    "DEBUG": "",
    "SECRET_KEY": "pR0d-" + "k3y_" * 15,
    "ALLOWED_HOSTS": "portal.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://portal.example.com",
    "DATABASE_URL": "postgres://portal:secret@db.internal:5432/portal",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
}
REAL_STRIPE = {
    "STRIPE_API_BASE": "https://api.stripe.com",
    "STRIPE_SECRET_KEY": "sk_live_x",
    "STRIPE_PUBLISHABLE_KEY": "pk_live_x",
    "STRIPE_WEBHOOK_SECRET": "whsec_x",
}


def run_production(args, extra=None):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(PRODUCTION | (extra or {}))
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.join(os.path.dirname(__file__), "..", ".."),
    )


@pytest.mark.parametrize("extra", [{}, REAL_STRIPE], ids=["localstripe", "real-stripe"])
def test_check_deploy_is_clean_with_production_settings(extra):
    result = run_production(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], extra)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert "WARNING" not in result.stderr


PRODUCTION_PROBE = """
import django
django.setup()
from django.conf import settings as s
from django.test import Client
from core.security import header_value
print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY,
      s.CSRF_COOKIE_HTTPONLY, s.SESSION_COOKIE_SAMESITE, s.CSRF_COOKIE_SAMESITE)
print(header_value())
client = Client(HTTP_HOST="portal.example.com")
plain = client.get("/")
print(plain.status_code, plain["Location"])
secure = client.get("/", HTTP_X_FORWARDED_PROTO="https")
print(secure.status_code, secure["Strict-Transport-Security"])
print(secure["Content-Security-Policy"])
from django.middleware.security import SecurityMiddleware
from django.test import RequestFactory
probe = RequestFactory(HTTP_HOST="portal.example.com").get("/healthz")
print("healthz redirected:", SecurityMiddleware(lambda r: None).process_request(probe) is not None)
"""


def test_production_has_hsts_secure_cookies_and_the_stripe_csp():
    result = run_production(["-c", PRODUCTION_PROBE], REAL_STRIPE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "True True True True Lax Lax",
        PRODUCTION_CSP,
        "301 https://portal.example.com/",
        "302 max-age=31536000; includeSubDomains; preload",
        PRODUCTION_CSP,
        "healthz redirected: False",
    ]


# Passwords --------------------------------------------------------------------------------

WEAK = [
    ("password123", "This password is too common."),
    ("Xy7-short", "This password is too short. It must contain at least 10 characters."),
    ("8675309123", "This password is entirely numeric."),
]


@pytest.mark.parametrize(("password", "message"), WEAK)
def test_sign_up_refuses_weak_passwords(client, password, message):
    response = client.post(
        reverse("account_signup"),
        {
            "full_name": "Sam Founder",
            "email": "sam@newco.test",
            "password1": password,
            "organisation_name": "NewCo",
        },
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists()
    assert not Organisation.objects.exists()


@pytest.mark.parametrize(("password", "message"), WEAK)
def test_password_change_refuses_weak_passwords(client_for, member, password, message):
    response = client_for(member).post(
        reverse("account_change_password"),
        {"oldpassword": PASSWORD, "password1": password, "password2": password},
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    member.refresh_from_db()
    assert member.check_password(PASSWORD)


@pytest.mark.parametrize(("password", "message"), WEAK)
def test_password_reset_refuses_weak_passwords(client, member, committed, password, message):
    with committed():
        client.post(reverse("account_reset_password"), {"email": member.email})
    link = re.search(r"https?://[^/\s]+(/accounts/password/reset/key/\S+)", mail.outbox[0].body)
    page = client.get(link.group(1), follow=True)
    form_url = page.redirect_chain[-1][0]
    response = client.post(form_url, {"password1": password, "password2": password})
    assert response.status_code == 200
    assert message in response.content.decode()
    member.refresh_from_db()
    assert member.check_password(PASSWORD)


@pytest.mark.parametrize(("password", "message"), WEAK)
def test_invitation_with_a_new_account_refuses_weak_passwords(client, org, password, message):
    invitation = InvitationFactory(organisation=org, email="new@acme.test")
    response = client.post(
        reverse("accounts:invitation_accept", args=[invitation.token]),
        {"full_name": "New Person", "password": password},
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.filter(email="new@acme.test").exists()
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.PENDING


# Rate limits ----------------------------------------------------------------------------------


def assert_refused(response, retry_after: int):
    assert response.status_code == 429
    assert response["Retry-After"] == str(retry_after)
    assert "Too many attempts" in response.content.decode()


def test_sixth_failed_sign_in_for_one_account_is_refused_even_with_the_right_password(client):
    UserFactory(email="target@example.test")
    login = reverse("account_login")
    for _ in range(5):
        response = client.post(login, {"login": "target@example.test", "password": "wrong-pass-1"})
        assert "The email address and/or password you specified are not correct." in (
            response.content.decode()
        )
    # Another address from the same place still gets its own attempts.
    other = client.post(login, {"login": "other@example.test", "password": "wrong-pass-1"})
    assert "are not correct" in other.content.decode()
    blocked = client.post(login, {"login": "target@example.test", "password": PASSWORD})
    assert blocked.status_code == 200
    assert "Too many failed login attempts. Try again later." in blocked.content.decode()
    assert "_auth_user_id" not in client.session


def test_sixth_password_reset_for_one_address_is_refused(client, member, committed):
    for _ in range(5):
        with committed():
            response = client.post(reverse("account_reset_password"), {"email": member.email})
        assert response.status_code == 302
    with committed():
        refused = client.post(reverse("account_reset_password"), {"email": member.email})
    assert refused.status_code == 429
    assert "Too many attempts" in refused.content.decode()
    assert len(mail.outbox) == 5


@time_machine.travel(FROZEN, tick=False)
def test_invitation_link_is_limited_per_address_and_the_refused_post_changes_nothing(client, org):
    invitation = InvitationFactory(organisation=org, email="new@acme.test")
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    for _ in range(20):
        assert client.get(url).status_code == 200
    refused = client.post(url, {"full_name": "New Person", "password": "a-long-fine-passphrase"})
    assert_refused(refused, retry_after=40)
    assert not User.objects.filter(email="new@acme.test").exists()
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.PENDING
    # Another address is not affected.
    other = client.get(url, REMOTE_ADDR="198.51.100.7")
    assert other.status_code == 200


@time_machine.travel(FROZEN, tick=False)
def test_guessing_link_tokens_is_refused_after_ten_unknown_tokens(client, client_for, org):
    invitation = InvitationFactory(organisation=org, email="member@acme.test")
    member = UserFactory(email="member@acme.test")
    for number in range(10):
        guess = client.get(reverse("accounts:invitation_accept", args=[f"guess-{number}"]))
        assert guess.status_code == 404
    # From now on even a real link is refused to this address, and accepts nothing.
    refused = client_for(member).post(
        reverse("accounts:invitation_accept", args=[invitation.token])
    )
    assert_refused(refused, retry_after=580)
    assert not Membership.objects.filter(user=member).exists()
    verify = client.get(reverse("accounts:primary_email_verify", args=["guess-11"]))
    assert_refused(verify, retry_after=580)


@time_machine.travel(FROZEN, tick=False)
def test_primary_email_link_is_limited_and_the_refused_post_changes_nothing(
    client, client_for, admin, org, committed
):
    old = org.primary_email
    with committed():
        client_for(admin).post(
            reverse("accounts:organisation_primary_email", args=[org.slug]),
            {"new_email": "finance@acme.test"},
        )
    path = re.search(r"https?://[^/\s]+(/verify-primary-email/\S+/)", mail.outbox[0].body)
    client.logout()
    for _ in range(20):
        assert client.get(path.group(1)).status_code == 200
    assert_refused(client.post(path.group(1)), retry_after=40)
    org.refresh_from_db()
    assert org.primary_email == old


@time_machine.travel(FROZEN, tick=False)
def test_sso_sign_in_start_is_limited_per_address_and_stores_no_request_when_refused(
    client, admin, org
):
    enterprise_with_idp(org, admin)
    url = reverse("sso:login", args=[org.slug])
    for _ in range(30):
        assert client.get(url).status_code == 302
    assert_refused(client.get(url), retry_after=40)
    # Test SSO starts count against the same budget.
    assert_refused(client.post(reverse("sso:test", args=[org.slug])), retry_after=40)
    assert SsoRequest.objects.count() == 30


def test_limits_count_per_key_and_action_and_peek_counts_nothing():
    with time_machine.travel(FROZEN, tick=False):
        assert ratelimit.peek("key:1", "api", "2/m") == ratelimit.Decision(allowed=True)
        assert ratelimit.hit("key:1", "api", "2/m").allowed
        assert ratelimit.hit("key:1", "api", "2/m").allowed
        assert ratelimit.peek("key:1", "api", "2/m") == ratelimit.Decision(False, 40)
        assert ratelimit.hit("key:1", "api", "2/m") == ratelimit.Decision(False, 40)
        assert ratelimit.hit("key:2", "api", "2/m").allowed
        assert ratelimit.hit("key:1", "export", "2/m").allowed
    with time_machine.travel(datetime(2026, 11, 27, 9, 1, 0, tzinfo=UTC), tick=False):
        assert ratelimit.hit("key:1", "api", "2/m").allowed


@pytest.mark.parametrize(
    ("text", "limit"),
    [("20/m", (20, 60)), ("10/10m", (10, 600)), ("1000/h", (1000, 3600)), ("5/30s", (5, 30))],
)
def test_limits_are_written_as_allauth_writes_them(text, limit):
    parsed = ratelimit.Limit.parse(text)
    assert (parsed.count, parsed.seconds) == limit


# Failing open ---------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cache_at(location, backend="core.ratelimit.FailOpenRedisCache"):
    return {"default": {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": "test"}}


def test_with_redis_down_every_limited_page_still_works(client, settings, org, member):
    settings.CACHES = cache_at(f"redis://127.0.0.1:{closed_port()}/0")
    invitation = InvitationFactory(organisation=org, email="new@acme.test")
    url = reverse("accounts:invitation_accept", args=[invitation.token])
    for _ in range(25):
        assert client.get(url).status_code == 200
    for _ in range(7):
        response = client.post(reverse("account_reset_password"), {"email": member.email})
        assert response.status_code == 302
    signed_in = client.post(reverse("account_login"), {"login": member.email, "password": PASSWORD})
    assert signed_in.status_code == 302
    assert client.session["_auth_user_id"] == str(member.pk)


def test_the_helper_fails_open_on_any_cache_backend(settings):
    settings.CACHES = cache_at(
        f"redis://127.0.0.1:{closed_port()}/0",
        backend="django.core.cache.backends.redis.RedisCache",
    )
    for _ in range(3):
        assert ratelimit.hit("key:1", "api", "1/m") == ratelimit.Decision(allowed=True)


def test_a_redis_that_does_not_answer_costs_one_short_timeout(client, settings, org):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings.CACHES = cache_at(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        invitation = InvitationFactory(organisation=org, email="new@acme.test")
        url = reverse("accounts:invitation_accept", args=[invitation.token])
        started = time.monotonic()
        assert client.get(url).status_code == 200
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(5):
            assert client.get(url).status_code == 200
        after = time.monotonic() - started
    assert first < 2
    # Redis is left alone for a few seconds after a failure.
    assert after < 1
