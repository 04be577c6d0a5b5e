"""Plain helpers for the SSO tests (fixtures stay in tests/sso/conftest.py)."""

from devkit.saml_idp import authn_request_from_redirect
from sso import saml
from sso.views import BROWSER_COOKIE


class SsoBrowser:
    """One browser (a Django test client) going through SP-initiated sign-ins."""

    def __init__(self, client, idp, organisation):
        self.client = client
        self.idp = idp
        self.organisation = organisation

    def start(self, mode="sign_in", organisation=None, next_url=""):
        organisation = organisation or self.organisation
        if mode == "test":
            response = self.client.post(f"/sso/{organisation.slug}/test/")
        else:
            query = f"?next={next_url}" if next_url else ""
            response = self.client.get(f"/sso/{organisation.slug}/login/{query}")
        assert response.status_code == 302, response.content[:500]
        assert response["Location"].startswith(self.idp.sso_url)
        return authn_request_from_redirect(response["Location"])

    def answer(self, request, email="member@acme.test", organisation=None, **kwargs):
        organisation = organisation or self.organisation
        return self.idp.response(
            email=email,
            acs_url=kwargs.pop("acs_url", saml.acs_url(organisation)),
            audience=kwargs.pop("audience", saml.sp_entity_id(organisation)),
            in_response_to=kwargs.pop("in_response_to", request["id"]),
            **kwargs,
        )

    def post(self, saml_response, organisation=None):
        organisation = organisation or self.organisation
        return self.client.post(f"/sso/{organisation.slug}/acs/", {"SAMLResponse": saml_response})

    def sign_in(self, email="member@acme.test", **kwargs):
        request = self.start()
        return self.post(self.answer(request, email=email, **kwargs))

    @property
    def has_state_cookie(self):
        return BROWSER_COOKIE in self.client.cookies
