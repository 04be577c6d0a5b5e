"""An SSO sign-in is not asked for the portal's two-factor code: the IdP signs the user in with
its own second factor (docs/architecture.md#decision-two-factor-sign-in-builds-on-allauth-mfa)."""

import pytest
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

from accounts.two_factor import has_two_factor

pytestmark = pytest.mark.django_db


def test_sso_sign_in_of_a_user_with_two_factor_is_not_asked_for_the_code(sso_client, member):
    TOTP.activate(member, generate_totp_secret())
    RecoveryCodes.activate(member)
    assert has_two_factor(member)
    response = sso_client.sign_in(email="member@acme.test")
    assert response.status_code == 302
    assert "/2fa/" not in response["Location"]
    assert int(sso_client.client.session["_auth_user_id"]) == member.pk
    assert sso_client.client.get("/o/acme/").status_code == 200
