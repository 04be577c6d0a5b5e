"""Reading an Identity Provider's SAML metadata, pasted or fetched from its URL.

Parsing goes through python3-saml's parser, which refuses DTDs and entities (no XXE, no
billion laughs). Fetching guards against SSRF: outside development settings only https, and
only public addresses (the host is resolved once, every address checked, and the connection
made to the checked address, so DNS cannot swap in an internal one between check and use);
redirects are followed at most three times, each one checked again; a timeout and a size
limit bound the work.
"""

import base64
import hashlib
import http.client
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import urljoin, urlsplit

from cryptography import x509
from django.conf import settings
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from core.errors import ServiceError

MAX_METADATA_BYTES = 1_000_000
FETCH_TIMEOUT_SECONDS = 5.0
MAX_REDIRECTS = 3


class MetadataCode(StrEnum):
    """`ServiceError.code` of the refusals raised here."""

    INVALID = "metadata_invalid"
    FETCH_FAILED = "metadata_fetch_failed"


@dataclass
class IdpMetadata:
    entity_id: str
    sso_url: str
    certificates: list[dict]
    warnings: list[str] = field(default_factory=list)


def _error(message: str) -> ServiceError:
    return ServiceError(message, field="metadata_xml", code=MetadataCode.INVALID)


def certificate_info(pem_body: str) -> dict:
    """The facts about one certificate we show and check (dates as ISO 8601, UTC)."""
    der = base64.b64decode("".join(pem_body.split()), validate=True)
    cert = x509.load_der_x509_certificate(der)
    return {
        "pem": base64.b64encode(der).decode(),
        "fingerprint": hashlib.sha256(der).hexdigest(),
        "subject": cert.subject.rfc4514_string()[:200],
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def certificate_expires(cert: dict) -> datetime:
    return datetime.fromisoformat(cert["not_after"]).astimezone(UTC)


def metadata_parse(xml: str | bytes, *, now: datetime) -> IdpMetadata:
    """The IdP's entity id, SSO URL and signing certificates, or ServiceError saying what is
    wrong. Certificates that have expired are left out (with a warning); none valid is an
    error."""
    xml = _xml_checked(xml)
    try:
        found = OneLogin_Saml2_IdPMetadataParser.parse(
            xml, required_sso_binding=OneLogin_Saml2_Constants.BINDING_HTTP_REDIRECT
        )
    except Exception as error:  # noqa: BLE001
        raise _error(f"The metadata could not be read ({str(error)[:120]}).") from None
    idp = found.get("idp") or {}
    entity_id, sso_url = _idp_endpoint(idp)
    certificates, warnings = _signing_certificates(idp, now=now)
    return IdpMetadata(entity_id, sso_url, certificates, warnings)


def _xml_checked(xml: str | bytes) -> bytes:
    """The metadata as bytes, once it is small enough, not an HTML page and safe XML."""
    if isinstance(xml, str):
        xml = xml.encode()
    xml = xml.strip()
    if not xml:
        raise _error("Paste the metadata XML or enter its URL.")
    if len(xml) > MAX_METADATA_BYTES:
        raise _error("The metadata is larger than 1 MB; that is not IdP metadata.")
    head = xml[:512].lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        raise _error("This is an HTML page, not SAML metadata. Use the metadata URL or XML.")
    try:
        OneLogin_Saml2_XML.to_etree(xml)
    except Exception as error:  # noqa: BLE001 - any parser complaint means the same to the Admin
        if "DTD" in str(error) or "entit" in str(error).lower():
            raise _error("The metadata contains a DTD or entities, which we refuse.") from None
        raise _error(f"The metadata is not valid XML ({str(error)[:120]}).") from None
    return xml


def _idp_endpoint(idp: dict) -> tuple[str, str]:
    """The IdP's entity id and the SSO URL people's browsers are sent to."""
    entity_id = idp.get("entityId") or ""
    if not entity_id:
        raise _error(
            "The metadata has no IdP EntityDescriptor (IDPSSODescriptor with an entityID)."
        )
    sso_url = (idp.get("singleSignOnService") or {}).get("url") or ""
    if not sso_url:
        raise _error(
            "The metadata has no SingleSignOnService with the HTTP-Redirect binding, which we "
            "use to send people to the IdP."
        )
    # People's browsers are sent there with a SAML request: plain http only in development,
    # where local test IdPs are the norm (the sign-in page's CSP allows https only otherwise).
    schemes = ("https", "http") if settings.SSO_METADATA_ALLOW_PRIVATE_URLS else ("https",)
    if urlsplit(sso_url).scheme not in schemes:
        raise _error(
            "The IdP's SingleSignOnService must be an https:// URL."
            if "http" not in schemes
            else "The IdP's SingleSignOnService is not an http(s) URL."
        )
    return entity_id, sso_url


def _signing_certificates(idp: dict, *, now: datetime) -> tuple[list[dict], list[str]]:
    """The distinct signing certificates still valid at `now`, and warnings for the rest."""
    bodies = list((idp.get("x509certMulti") or {}).get("signing") or [])
    if idp.get("x509cert"):
        bodies.append(idp["x509cert"])
    if not bodies:
        raise _error('The metadata lists no signing certificate (KeyDescriptor use="signing").')
    certificates, warnings = [], []
    seen = set()
    for position, body in enumerate(bodies, start=1):
        try:
            info = certificate_info(body)
        except ValueError:
            raise _error(
                f"Signing certificate {position} in the metadata cannot be read."
            ) from None
        if info["fingerprint"] in seen:
            continue
        seen.add(info["fingerprint"])
        if certificate_expires(info) <= now:
            warnings.append(
                f"Ignored a signing certificate that expired on "
                f"{certificate_expires(info):%d %b %Y} ({info['subject']})."
            )
            continue
        certificates.append(info)
    if not certificates:
        raise _error(
            "Every signing certificate in the metadata has expired. Renew it in your IdP "
            "and copy the metadata again."
        )
    return certificates, warnings


# Fetching ---------------------------------------------------------------------------------


def _fetch_error(message: str) -> ServiceError:
    return ServiceError(message, field="metadata_url", code=MetadataCode.FETCH_FAILED)


def _address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address we checked, whatever DNS says a moment later."""

    def __init__(self, host, port, *, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, *, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise _fetch_error(f"The metadata URL's host {host} cannot be found.") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise _fetch_error(f"The metadata URL's host {host} cannot be found.")
    if not settings.SSO_METADATA_ALLOW_PRIVATE_URLS:
        refused = [a for a in addresses if not _address_allowed(a)]
        if refused:
            raise _fetch_error(
                f"The metadata URL points to a private, loopback or link-local address "
                f"({refused[0]}); it must be reachable on the public internet."
            )
    return addresses[0]


def metadata_fetch(url: str) -> bytes:
    """GET the metadata at `url` (see the module docstring for the guards)."""
    deadline = time.monotonic() + FETCH_TIMEOUT_SECONDS
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        schemes = ("https", "http") if settings.SSO_METADATA_ALLOW_PRIVATE_URLS else ("https",)
        if parts.scheme not in schemes or not parts.hostname:
            raise _fetch_error("The metadata URL must be an https:// address.")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = _resolve(parts.hostname, port)
        connection_class = (
            _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        )
        conn = connection_class(
            parts.hostname, port, address=address, timeout=max(0.1, deadline - time.monotonic())
        )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request("GET", path, headers={"Accept": "application/samlmetadata+xml, */*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise _fetch_error("The metadata URL redirects without saying where.")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise _fetch_error(f"The metadata URL answered HTTP {response.status}.")
            body = bytearray()
            while len(body) <= MAX_METADATA_BYTES:
                if time.monotonic() > deadline:
                    raise _fetch_error("The metadata URL took too long to answer.")
                chunk = response.read(65536)
                if not chunk:
                    break
                body += chunk
            if len(body) > MAX_METADATA_BYTES:
                raise _fetch_error("The metadata URL answered with more than 1 MB.")
            content_type = (response.getheader("Content-Type") or "").lower()
            if "html" in content_type:
                raise _fetch_error(
                    "The metadata URL answered with an HTML page, not SAML metadata. "
                    "Check you copied the metadata URL, not the app's sign-in page."
                )
            return bytes(body)
        except TimeoutError:
            raise _fetch_error("The metadata URL did not answer in time.") from None
        except (OSError, http.client.HTTPException) as error:
            raise _fetch_error(f"The metadata URL could not be reached ({error}).") from None
        finally:
            conn.close()
    raise _fetch_error("The metadata URL redirects too many times.")
