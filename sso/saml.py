"""python3-saml, configured for one organisation, and the checks it leaves to us.

python3-saml verifies the XML signature (and that the assertion is the signed element, which
stops signature wrapping), refuses SHA-1 with `rejectDeprecatedAlgorithm`, parses with DTDs
and entities forbidden, and compares Issuer, Audience, Destination and Recipient when they are
present. We add: the Destination, Audience and Recipient must be present (python3-saml lets
an absent one pass), and everything about InResponseTo, replay and who may sign in
(`sso.services`).
"""

import binascii
from base64 import b64decode
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from billing_portal.links import absolute_url

MAX_RESPONSE_BYTES = 256_000

EMAIL_ATTRIBUTES = (
    "email",
    "emailaddress",
    "mail",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    "urn:oid:0.9.2342.19200300.100.1.3",
)
NAME_ATTRIBUTES = (
    "name",
    "displayname",
    "http://schemas.microsoft.com/identity/claims/displayname",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
)


class SamlMalformed(Exception):
    """The SAMLResponse is not something we can even read: answered with 400."""


class SamlRefused(Exception):
    """A readable response we do not accept; `reason` says exactly why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Assertion:
    name_id: str
    email: str
    full_name: str
    assertion_id: str
    attributes: dict = field(default_factory=dict)


def sp_entity_id(organisation) -> str:
    return absolute_url("sso:metadata", organisation.slug)


def acs_url(organisation) -> str:
    return absolute_url("sso:acs", organisation.slug)


def saml_settings(config) -> dict:
    organisation = config.organisation
    settings = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": sp_entity_id(organisation),
            "assertionConsumerService": {
                "url": acs_url(organisation),
                "binding": OneLogin_Saml2_Constants.BINDING_HTTP_POST,
            },
            "NameIDFormat": OneLogin_Saml2_Constants.NAMEID_EMAIL_ADDRESS,
            "x509cert": "",
            "privateKey": "",
        },
        "security": {
            "authnRequestsSigned": False,
            "wantAssertionsSigned": True,
            "wantMessagesSigned": False,
            "wantNameId": True,
            "wantAssertionsEncrypted": False,
            "wantNameIdEncrypted": False,
            "rejectDeprecatedAlgorithm": True,
            "requestedAuthnContext": False,
            "allowSingleLabelDomains": True,
            "rejectUnsolicitedResponsesWithInResponseTo": True,
        },
    }
    if config.is_configured:
        settings["idp"] = {
            "entityId": config.idp_entity_id,
            "singleSignOnService": {
                "url": config.idp_sso_url,
                "binding": OneLogin_Saml2_Constants.BINDING_HTTP_REDIRECT,
            },
            # Every certificate the metadata lists: during a rollover, both old and new.
            "x509certMulti": {"signing": [cert["pem"] for cert in config.idp_certificates]},
        }
    return settings


def sp_metadata_xml(config) -> str:
    metadata = OneLogin_Saml2_Settings(
        saml_settings(config), sp_validation_only=True
    ).get_sp_metadata()
    return metadata.decode() if isinstance(metadata, bytes) else metadata


def _request_data(config, post_data: dict | None = None) -> dict:
    """The request as python3-saml wants it, described by our canonical ACS URL (SITE_URL)
    rather than by whatever Host header or proxy the request came through."""
    url = urlsplit(acs_url(config.organisation))
    return {
        "https": "on" if url.scheme == "https" else "off",
        "http_host": url.netloc,
        "script_name": url.path,
        "get_data": {},
        "post_data": post_data or {},
    }


def authn_request(config, *, relay_state: str = "") -> tuple[str, str]:
    """(the IdP URL to send the browser to, the AuthnRequest ID)."""
    auth = OneLogin_Saml2_Auth(_request_data(config), old_settings=saml_settings(config))
    url = auth.login(return_to=relay_state or None)
    return url, auth.get_last_request_id()


def response_open(config, saml_response: str) -> OneLogin_Saml2_Response:
    """Decode and parse the SAMLResponse, or SamlMalformed. Nothing is trusted yet."""
    if not saml_response:
        raise SamlMalformed("The request carries no SAMLResponse.")
    if len(saml_response) > MAX_RESPONSE_BYTES:
        raise SamlMalformed("The SAMLResponse is too large.")
    try:
        b64decode(saml_response, validate=True)
    except (binascii.Error, ValueError):
        raise SamlMalformed("The SAMLResponse is not base64.") from None
    try:
        saml = OneLogin_Saml2_Settings(saml_settings(config), sp_validation_only=True)
        response = OneLogin_Saml2_Response(saml, saml_response)
        root = response.document
        if root is None or not str(root.tag).endswith("}Response"):
            raise SamlMalformed("The SAMLResponse is not a SAML Response.")
    except SamlMalformed:
        raise
    except Exception as error:  # noqa: BLE001 - parser errors: DTD, entities, not XML, ...
        raise SamlMalformed(f"The SAMLResponse cannot be read: {str(error)[:200]}") from None
    return response


def in_response_to(response: OneLogin_Saml2_Response) -> str | None:
    return response.get_in_response_to()


def response_validate(config, response_text: str, *, request_id: str) -> Assertion:
    """Every signature and condition check, for a response answering `request_id`."""
    organisation = config.organisation
    saml = OneLogin_Saml2_Settings(saml_settings(config))
    response = OneLogin_Saml2_Response(saml, response_text)
    expected_acs = acs_url(organisation)
    destination = response.document.get("Destination")
    if not destination:
        raise SamlRefused(f"The response has no Destination; it must be {expected_acs}.")
    if destination != expected_acs:
        raise SamlRefused(
            f"The response is addressed to {destination}, not to this organisation's ACS URL "
            f"{expected_acs}."
        )
    request_data = _request_data(config, {"SAMLResponse": response_text})
    if not response.is_valid(request_data, request_id=request_id):
        reason = response.get_error() or "The response is not valid."
        if "SubjectConfirmation" in reason:
            reason += f" ({_recipient_problem(response, expected_acs)})"
        raise SamlRefused(reason)
    audiences = response.get_audiences()
    if sp_entity_id(organisation) not in audiences:
        raise SamlRefused(
            f"The assertion's Audience must be {sp_entity_id(organisation)} "
            f"(got {', '.join(audiences) or 'none'})."
        )
    if _recipients(response) != {expected_acs}:
        raise SamlRefused(_recipient_problem(response, expected_acs))
    attributes = {
        str(key): [str(value) for value in values]
        for key, values in (response.get_attributes() or {}).items()
    }
    name_id = response.get_nameid() or ""
    return Assertion(
        name_id=name_id,
        email=_email(name_id, attributes),
        full_name=_first(attributes, NAME_ATTRIBUTES),
        assertion_id=response.get_assertion_id() or "",
        attributes=attributes,
    )


def _recipients(response) -> set:
    confirmations = response._query_assertion(  # the signed assertion only, never a copy
        "/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData"
    )
    return {node.get("Recipient") for node in confirmations}


def _recipient_problem(response, expected_acs) -> str:
    try:
        found = ", ".join(sorted(r or "none" for r in _recipients(response))) or "none"
    except Exception:  # noqa: BLE001 - only words for the reason; the refusal stands anyway
        found = "unreadable"
    return f"The assertion's Recipient must be {expected_acs} (got {found})."


def _first(attributes: dict, names: tuple[str, ...]) -> str:
    lowered = {key.lower(): values for key, values in attributes.items()}
    for name in names:
        values = lowered.get(name.lower())
        if values:
            return values[0].strip()
    return ""


def _email(name_id: str, attributes: dict) -> str:
    candidate = name_id if "@" in name_id else _first(attributes, EMAIL_ATTRIBUTES)
    return candidate.strip().lower()
