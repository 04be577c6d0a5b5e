"""python3-saml, configured for one organisation, and the checks it leaves to us.

python3-saml verifies the XML signature (and that the assertion is the signed element, which
stops signature wrapping), refuses SHA-1 with `rejectDeprecatedAlgorithm`, parses with DTDs
and entities forbidden, and compares Issuer, Audience, Destination and Recipient when they are
present. We add: the Destination, Audience and Recipient must be present (python3-saml lets
an absent one pass), and the signed assertion itself must name the request it answers
(`SubjectConfirmationData/@InResponseTo`): python3-saml compares that attribute only when it
is there, and the Response element around the assertion is not covered by the assertion's
signature, so anyone can re-wrap a stolen assertion in a Response naming their own request.
Replay is `sso.responses`' and who may sign in `sso.provisioning`' (docs/sso.md).
"""

import binascii
from base64 import b64decode
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from core.links import absolute_url

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
            # Many IdPs (Google Workspace among them) send only the NameID: attributes optional.
            "wantAttributeStatement": False,
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


@dataclass(frozen=True)
class Binding:
    """Which sign-in request a response says it answers, before anything is verified.

    `response` is the Response element's InResponseTo (not covered by the assertion's
    signature); `assertion` the InResponseTo values of the assertion's bearer
    SubjectConfirmationData (None where one is absent). Only the assertion's count, and only
    once its signature is verified (`response_validate` checks them again then).
    """

    response: str | None
    assertion: tuple[str | None, ...]

    @property
    def request_id(self) -> str | None:
        """The one request the assertion names, or None when it names none or several."""
        ids = set(self.assertion)
        if len(ids) == 1 and None not in ids:
            return next(iter(ids))
        return None


def binding(response: OneLogin_Saml2_Response) -> Binding:
    return Binding(
        response=response.get_in_response_to() or None,
        assertion=tuple(data.get("InResponseTo") or None for data in _confirmations(response)),
    )


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
            reason = "No valid SubjectConfirmation: " + _confirmation_problem(
                response, expected_acs=expected_acs, request_id=request_id
            )
        raise SamlRefused(reason)
    # From here `_confirmations` reads the assertion whose signature was just verified.
    found = binding(response)
    if found.request_id != request_id or found.response not in (None, request_id):
        raise SamlRefused(
            "The assertion does not answer this sign-in request: "
            + _binding_problem(found, request_id=request_id)
        )
    audiences = response.get_audiences()
    if sp_entity_id(organisation) not in audiences:
        raise SamlRefused(
            f"The assertion's Audience must be {sp_entity_id(organisation)} "
            f"(got {', '.join(audiences) or 'none'})."
        )
    if _recipients(response) != {expected_acs}:
        raise SamlRefused(_recipient_problem(response, expected_acs))
    assertion_id = response.get_assertion_id() or ""
    if not assertion_id:
        raise SamlRefused("The assertion has no ID, so its single use cannot be checked.")
    attributes = {
        str(key): [str(value) for value in values]
        for key, values in (response.get_attributes() or {}).items()
    }
    name_id = response.get_nameid() or ""
    return Assertion(
        name_id=name_id,
        email=_email(name_id, attributes),
        full_name=_first(attributes, NAME_ATTRIBUTES),
        assertion_id=assertion_id,
        attributes=attributes,
    )


def _binding_problem(found: Binding, *, request_id: str) -> str:
    named = [irt for irt in found.assertion if irt]
    if not found.assertion:
        return "it has no bearer SubjectConfirmationData."
    if len(named) < len(found.assertion):
        return (
            "its SubjectConfirmationData has no InResponseTo, so nothing the IdP signed ties it "
            "to a sign-in started here (an IdP-initiated or re-wrapped assertion)."
        )
    if set(named) != {request_id}:
        return f"it answers {', '.join(sorted(set(named)))}, not {request_id}."
    return f"the Response element says it answers {found.response}, the assertion {request_id}."


def _confirmations(response) -> list:
    """The assertion's bearer SubjectConfirmationData elements (the signed assertion once the
    response is validated, never a copy hidden elsewhere in the document)."""
    nodes = []
    for confirmation in response._query_assertion("/saml:Subject/saml:SubjectConfirmation"):
        method = confirmation.get("Method")
        if method and method != OneLogin_Saml2_Constants.CM_BEARER:
            continue
        nodes.extend(
            confirmation.findall(
                "saml:SubjectConfirmationData", namespaces=OneLogin_Saml2_Constants.NSMAP
            )
        )
    return nodes


def _recipients(response) -> set:
    return {node.get("Recipient") for node in _confirmations(response)}


def _recipient_problem(response, expected_acs) -> str:
    try:
        found = ", ".join(sorted(r or "none" for r in _recipients(response))) or "none"
    except Exception:  # noqa: BLE001 - only words for the reason; the refusal stands anyway
        found = "unreadable"
    return f"The assertion's Recipient must be {expected_acs} (got {found})."


def _confirmation_problem(response, *, expected_acs: str, request_id: str) -> str:
    """Why python3-saml found no valid SubjectConfirmation, in the terms it checks them:
    InResponseTo, Recipient, NotOnOrAfter and NotBefore of each bearer confirmation."""
    try:
        confirmations = _confirmations(response)
    except Exception:  # noqa: BLE001 - only words for the reason; the refusal stands anyway
        return "the assertion's Subject cannot be read."
    if not confirmations:
        return "the assertion has no bearer SubjectConfirmationData."
    now = OneLogin_Saml2_Utils.now()
    problems = []
    for data in confirmations:
        irt = data.get("InResponseTo")
        recipient = data.get("Recipient")
        not_on_or_after = data.get("NotOnOrAfter")
        not_before = data.get("NotBefore")
        if irt and irt != request_id:
            problems.append(f"it answers the sign-in request {irt}, not this one ({request_id})")
        elif recipient and recipient != expected_acs:
            problems.append(f"its Recipient must be {expected_acs} (got {recipient})")
        elif not_on_or_after and _saml_time(not_on_or_after) <= now:
            problems.append(
                f"it expired at {not_on_or_after} (NotOnOrAfter); the time here is "
                f"{_saml_instant(now)}. Check the clocks of the IdP and of this server"
            )
        elif not_before and _saml_time(not_before) > now:
            problems.append(
                f"it is not valid before {not_before} (NotBefore); the time here is "
                f"{_saml_instant(now)}. Check the clocks of the IdP and of this server"
            )
    return "; ".join(problems) + "." if problems else "the assertion's Subject is not usable."


def _saml_time(value: str) -> int:
    try:
        return OneLogin_Saml2_Utils.parse_SAML_to_time(value)
    except Exception:  # noqa: BLE001 - an unreadable instant is never valid
        return 0


def _saml_instant(timestamp: int) -> str:
    return OneLogin_Saml2_Utils.parse_time_to_SAML(timestamp)


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
