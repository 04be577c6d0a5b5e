"""A local SAML Identity Provider for tests and for trying SSO with `make run`.

It writes IdP metadata and signed SAML Responses (assertion signed with python3-saml's
xmlsec signing), with knobs to break each rule the SP must enforce. Used in-process by
tests/sso and, through devkit/saml_idp_server.py, as its own process by the browser journey
and by `make run` (whose key pair is kept on disk, see `TestIdP.stored`).
"""

import base64
import os
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils

SHA1 = (C.RSA_SHA1, C.SHA1)
SHA256 = (C.RSA_SHA256, C.SHA256)


def key_pair(common_name="Test IdP", *, not_before=None, not_after=None):
    """(private key PEM, certificate PEM) of a fresh self-signed RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def stored_key_pair(key_dir: Path) -> tuple[str, str]:
    """(private key PEM, certificate PEM) kept in `key_dir`, made the first time.

    The demo organisation's SSO configuration holds this certificate, so the IdP that
    `make run` starts must sign with the same key after every restart. Valid for ten years
    from when it was made: the demo must not break a year later."""
    key_dir = Path(key_dir)
    key_file, cert_file = key_dir / "idp-key.pem", key_dir / "idp-cert.pem"
    if key_file.exists() and cert_file.exists():
        return key_file.read_text(), cert_file.read_text()
    key_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    key_pem, cert_pem = key_pair(
        "Demo test IdP", not_before=now - timedelta(days=1), not_after=now + timedelta(days=3650)
    )
    # Written to temporary names, then renamed: a reader never sees half a pair.
    for path, text in ((cert_file, cert_pem), (key_file, key_pem)):
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(text)
        temporary.chmod(0o600)
        temporary.replace(path)
    return key_pem, cert_pem


def cert_body(cert_pem: str) -> str:
    return "".join(line for line in cert_pem.splitlines() if "CERTIFICATE" not in line)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TestIdP:
    __test__ = False  # not a pytest class

    def __init__(self, entity_id="https://idp.example.test/saml", sso_url=None, **cert_kwargs):
        self.entity_id = entity_id
        self.sso_url = sso_url or "https://idp.example.test/sso"
        self.key_pem, self.cert_pem = key_pair(**cert_kwargs)

    @classmethod
    def stored(cls, *, base_url: str, key_dir: Path) -> "TestIdP":
        """The IdP served at `base_url` (e.g. http://127.0.0.1:58480), signing with the key
        pair kept in `key_dir`: the same IdP, as its metadata says, after every restart."""
        idp = cls.__new__(cls)
        base_url = base_url.rstrip("/")
        idp.entity_id = f"{base_url}/metadata"
        idp.sso_url = f"{base_url}/sso"
        idp.key_pem, idp.cert_pem = stored_key_pair(key_dir)
        return idp

    def metadata(
        self, *, extra_cert_pems=(), with_signing_cert=True, binding=C.BINDING_HTTP_REDIRECT
    ):
        certs = [self.cert_pem, *extra_cert_pems] if with_signing_cert else list(extra_cert_pems)
        keys = "".join(
            '<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
            f"{cert_body(pem)}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
            for pem in certs
        )
        return (
            '<?xml version="1.0"?>'
            '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
            f'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="{self.entity_id}">'
            '<md:IDPSSODescriptor WantAuthnRequestsSigned="false" '
            'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
            f"{keys}"
            "<md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
            "</md:NameIDFormat>"
            f'<md:SingleSignOnService Binding="{binding}" Location="{self.sso_url}"/>'
            "</md:IDPSSODescriptor></md:EntityDescriptor>"
        )

    def assertion_xml(
        self,
        *,
        email,
        audience,
        recipient,
        in_response_to,
        issuer=None,
        assertion_id=None,
        attributes=None,
        minutes_valid=5,
        name_id_only=False,
        now=None,
    ) -> str:
        now = now or datetime.now(UTC)
        issuer = issuer or self.entity_id
        assertion_id = assertion_id or f"_a{uuid.uuid4().hex}"
        irt = f' InResponseTo="{in_response_to}"' if in_response_to else ""
        until = _instant(now + timedelta(minutes=minutes_valid))
        recipient_attr = f' Recipient="{recipient}"' if recipient else ""
        audience_xml = (
            "<saml:AudienceRestriction><saml:Audience>"
            f"{audience}</saml:Audience></saml:AudienceRestriction>"
            if audience
            else ""
        )
        attrs = "".join(
            f'<saml:Attribute Name="{name}">'
            + "".join(f"<saml:AttributeValue>{value}</saml:AttributeValue>" for value in values)
            + "</saml:Attribute>"
            for name, values in (attributes or {"email": [email]}).items()
        )
        return (
            '<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
            'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
            f'ID="{assertion_id}" Version="2.0" IssueInstant="{_instant(now)}">'
            f"<saml:Issuer>{issuer}</saml:Issuer>"
            "<saml:Subject>"
            '<saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">'
            f"{email}</saml:NameID>"
            '<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">'
            f'<saml:SubjectConfirmationData NotOnOrAfter="{until}"'
            f"{recipient_attr}{irt}/>"
            "</saml:SubjectConfirmation></saml:Subject>"
            f'<saml:Conditions NotBefore="{_instant(now - timedelta(minutes=1))}" '
            f'NotOnOrAfter="{until}">'
            f"{audience_xml}</saml:Conditions>"
            f'<saml:AuthnStatement AuthnInstant="{_instant(now)}" '
            f'SessionIndex="_s{uuid.uuid4().hex}">'
            "<saml:AuthnContext><saml:AuthnContextClassRef>"
            "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
            "</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>"
            + (
                ""
                if name_id_only
                else f"<saml:AttributeStatement>{attrs}</saml:AttributeStatement>"
            )
            + "</saml:Assertion>"
        )

    def sign(self, xml: str, *, algorithms=SHA256, key_pem=None, cert_pem=None) -> str:
        signed = OneLogin_Saml2_Utils.add_sign(
            xml,
            key_pem or self.key_pem,
            cert_pem or self.cert_pem,
            sign_algorithm=algorithms[0],
            digest_algorithm=algorithms[1],
        )
        return signed.decode() if isinstance(signed, bytes) else signed

    def response_xml(
        self,
        *,
        assertion: str,
        destination,
        in_response_to,
        issuer=None,
    ) -> str:
        issuer = issuer or self.entity_id
        destination_attr = f' Destination="{destination}"' if destination else ""
        irt = f' InResponseTo="{in_response_to}"' if in_response_to else ""
        # Strip an XML declaration the signer may have added to the assertion.
        if assertion.startswith("<?xml"):
            assertion = assertion.split("?>", 1)[1]
        return (
            '<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
            'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
            f'ID="_r{uuid.uuid4().hex}" Version="2.0" IssueInstant="{_instant(datetime.now(UTC))}"'
            f"{destination_attr}{irt}>"
            f"<saml:Issuer>{issuer}</saml:Issuer>"
            '<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/>'
            "</samlp:Status>"
            f"{assertion}</samlp:Response>"
        )

    def response(
        self,
        *,
        email,
        acs_url,
        audience,
        in_response_to,
        destination="__acs__",
        recipient="__acs__",
        issuer=None,
        algorithms=SHA256,
        sign_assertion=True,
        attributes=None,
        assertion_id=None,
        key_pem=None,
        cert_pem=None,
        minutes_valid=5,
        assertion_in_response_to="__same__",
        sign_response=False,
        name_id_only=False,
        now=None,
    ) -> str:
        """A base64 SAMLResponse, as an IdP posts it to the ACS.

        `assertion_in_response_to=None` leaves InResponseTo out of the assertion (some IdPs
        put it on the Response only); `sign_response` signs the Response element as well;
        `name_id_only` sends no AttributeStatement (Google Workspace's default)."""
        assertion = self.assertion_xml(
            email=email,
            audience=audience,
            recipient=acs_url if recipient == "__acs__" else recipient,
            in_response_to=in_response_to
            if assertion_in_response_to == "__same__"
            else assertion_in_response_to,
            issuer=issuer,
            attributes=attributes,
            assertion_id=assertion_id,
            minutes_valid=minutes_valid,
            name_id_only=name_id_only,
            now=now,
        )
        if sign_assertion:
            assertion = self.sign(
                assertion, algorithms=algorithms, key_pem=key_pem, cert_pem=cert_pem
            )
        xml = self.response_xml(
            assertion=assertion,
            destination=acs_url if destination == "__acs__" else destination,
            in_response_to=in_response_to,
            issuer=issuer,
        )
        if sign_response:
            xml = self.sign(xml, algorithms=algorithms, key_pem=key_pem, cert_pem=cert_pem)
        return encode(xml)


def encode(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


def decode(saml_response: str) -> str:
    return base64.b64decode(saml_response).decode()


def authn_request_from_redirect(url: str) -> dict:
    """The ID, ACS URL and Issuer of the AuthnRequest in an HTTP-Redirect binding URL."""
    query = parse_qs(urlsplit(url).query)
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    root = etree.fromstring(xml)  # noqa: S320 - our own SP's request, in a test
    ns = {"saml": "urn:oasis:names:tc:SAML:2.0:assertion"}
    return {
        "id": root.get("ID"),
        "acs_url": root.get("AssertionConsumerServiceURL"),
        "issuer": root.find("saml:Issuer", ns).text,
        "relay_state": query.get("RelayState", [""])[0],
    }
