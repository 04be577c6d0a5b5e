"""Where each email on the Notifications page leads: the page where its action is.

The apps above accounts say, per email template, which pages those are
(`hooks.notification_links_add`, registered by portal.frame). An email's own link (its
invoice, its ticket, its Confirm payment page) is read back from the text we sent, so the link
points at the same object without storing anything more; a page without an object is reversed
with the organisation's slug; a page may narrow itself to the email's object by a filter whose
value is read from the subject (Invoice History filtered to the invoice's number). Only a link
into the notification's own organisation counts, and only a page the reader's role may open
(`tenant_view`'s roles): a Member never gets a link that would answer 403. No query: URL
resolving only. See docs/architecture.md#accounts.
"""

import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from accounts import hooks

# The end of a link in plain text: white space, or punctuation closing a sentence.
_TRAILING = ".,;:)!?'\""


@dataclass(frozen=True)
class NotificationLink:
    url: str
    text: str


def _links_in(body: str, prefix: str) -> dict[str, str]:
    """{URL name: path} of the links in `body` that start with `prefix` (our site and the
    organisation), the first link for each page."""
    found: dict[str, str] = {}
    for match in re.finditer(re.escape(settings.SITE_URL + prefix) + r"\S*", body):
        path = match.group(0)[len(settings.SITE_URL) :].rstrip(_TRAILING)
        try:
            view_name = resolve(urlsplit(path).path).view_name
        except Resolver404:
            continue
        found.setdefault(view_name, path)
    return found


def _roles_of(path: str) -> frozenset:
    try:
        return getattr(resolve(urlsplit(path).path).func, "tenant_roles", frozenset())
    except Resolver404:
        return frozenset()


def _narrowed(path: str, narrow: tuple[str, str] | None, subject: str) -> str:
    """`path` with ?<parameter>=<the first match of the pattern in the subject>, if any."""
    if narrow is None or urlsplit(path).query:
        return path
    parameter, pattern = narrow
    found = re.search(pattern, subject)
    return f"{path}?{urlencode({parameter: found.group(0)})}" if found else path


def notification_link(
    *, template: str, subject: str = "", body: str | None, organisation, role: str
) -> NotificationLink | None:
    """The first page registered for `template` that the email links to (or that needs no
    object) and `role` may open; None when there is none."""
    pages = hooks.notification_pages.get(template)
    if not pages:
        return None
    prefix = f"/o/{organisation.slug}/"
    in_body = _links_in(body or "", prefix)
    for url_name, text, *narrow in pages:
        path = in_body.get(url_name)
        if path is None:
            try:
                path = reverse(url_name, args=[organisation.slug])
            except NoReverseMatch:  # the page of one object, and the email names none
                continue
        if role in _roles_of(path):
            return NotificationLink(
                url=_narrowed(path, narrow[0] if narrow else None, subject), text=text
            )
    return None
