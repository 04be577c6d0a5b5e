"""An SSO sign-in from a new browser sends the sign-in notice too, and records the session
(docs/architecture.md#decision-session-records-and-sign-in-notices)."""

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import KnownBrowser, UserSession
from accounts.signin_notices import BROWSER_COOKIE

pytestmark = pytest.mark.django_db


def test_an_sso_sign_in_from_a_new_browser_sends_one_notice(
    member, sso_client, client_for, committed
):
    client_for(member)  # the member's first browser, known from an earlier sign-in
    sso_client.client.defaults["HTTP_USER_AGENT"] = (
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
    )
    with committed():
        response = sso_client.sign_in()
    assert response.status_code == 302, response.content[:500]
    [notice] = mail.outbox
    assert notice.to == ["member@acme.test"]
    assert "Browser: Firefox on Linux" in notice.body
    assert BROWSER_COOKIE in sso_client.client.cookies
    session = UserSession.objects.get(session_key=sso_client.client.session.session_key)
    assert (session.user, session.user_agent.endswith("Firefox/133.0")) == (member, True)
    # The same browser signing in again after signing out: known now.
    first_session = sso_client.client.session.session_key
    sso_client.client.post(reverse("account_logout"))
    with committed():
        again = sso_client.sign_in()
    assert again.status_code == 302
    assert again["Location"] == response["Location"]
    # A new sign-in indeed (a new session key), and still one notice.
    assert sso_client.client.session.session_key != first_session
    assert len(mail.outbox) == 1
    assert KnownBrowser.objects.filter(user=member).count() == 2
