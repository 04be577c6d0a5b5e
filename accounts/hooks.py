"""Where the apps above accounts plug into the frame of the organisation pages.

accounts sits below subscriptions, sso, billing and retention, so it never names them; they
(composed by portal.frame, registered in PortalConfig.ready) add what the frame needs:

- membership annotations: extra columns of the one membership query of tenant_view
  (accounts.selectors.membership_for_user), so a concern of the frame costs no query of its own;
- access gates: run by tenant_view before the role check; a gate returns a response (sign in
  another way, a refusal page) or None to let the request through;
- write guards: run by tenant_view for a change (POST, PUT, PATCH, DELETE) to a view not
  declared `allow_when_ended=True`; a guard returns the reason it refuses (403) or None;
- password sign-in checks: why a person may not sign in with a password, or None;
- landing notices: lines shown above the list of the signed-in user's organisations;
- menu links: the top bar's links to pages of the apps above (`organisation_urls`, built by
  accounts.context_processors), each a URL name taking the organisation's slug; among them
  "overview", the organisation's landing page (`overview_url`), which joins every app;
- Settings sections: the Settings pages of the apps above (accounts.roles.SettingsSection),
  placed among accounts' own by their `order`;
- notification links: per email template, the pages where its action is, so the Notifications
  page links each email there (accounts.notification_links).

Each hook runs in registration order; registering the same function twice keeps one.
See docs/architecture.md#accounts.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

MembershipAnnotations = Callable[[], dict]
AccessGate = Callable[[HttpRequest, object], HttpResponse | None]
WriteGuard = Callable[[object], str | None]
PasswordSignInCheck = Callable[[object], str | None]
LandingNotices = Callable[[object], list[str]]

membership_annotations: list[MembershipAnnotations] = []
access_gates: list[AccessGate] = []
write_guards: list[WriteGuard] = []
password_sign_in_checks: list[PasswordSignInCheck] = []
landing_notices: list[LandingNotices] = []
menu_url_names: dict[str, str] = {}
settings_sections: list = []
# {email template: ((URL name, link text[, (query parameter, pattern in the subject)]), ...)},
# best first.
notification_pages: dict[str, tuple[tuple, ...]] = {}


def _add(hooks: list, func) -> None:
    if func not in hooks:
        hooks.append(func)


def membership_annotations_add(func: MembershipAnnotations) -> None:
    """`func()` returns {name: expression} for Membership.objects.annotate (relations from the
    membership, e.g. `organisation__...`)."""
    _add(membership_annotations, func)


def access_gate_add(func: AccessGate) -> None:
    """`func(request, membership)`: a response instead of the page, or None."""
    _add(access_gates, func)


def write_guard_add(func: WriteGuard) -> None:
    """`func(membership)`: why a change is refused, or None."""
    _add(write_guards, func)


def password_sign_in_check_add(func: PasswordSignInCheck) -> None:
    """`func(user)`: why `user` may not sign in with a password, or None."""
    _add(password_sign_in_checks, func)


def landing_notices_add(func: LandingNotices) -> None:
    """`func(user)`: notices for the page listing the user's organisations."""
    _add(landing_notices, func)


def menu_urls_add(**url_names: str) -> None:
    """Top bar links, {key in `organisation_urls`: URL name taking the organisation's slug}."""
    menu_url_names.update(url_names)


def overview_url(slug: str) -> str:
    """The organisation's Overview, where signing in and accepting an invitation land: a page
    of the composition layer, registered as the menu link "overview"."""
    return reverse(menu_url_names["overview"], args=[slug])


def settings_section_add(section) -> None:
    """A Settings page of an app above accounts (an accounts.roles.SettingsSection)."""
    if all(existing.key != section.key for existing in settings_sections):
        settings_sections.append(section)


def notification_links_add(template: str, *pages: tuple) -> None:
    """The pages where the action of the email `template` is, best first, each (URL name,
    link text): a page the email itself links to (its invoice, its ticket) or one taking only
    the organisation's slug; a third item (query parameter, pattern) narrows the page to the
    first match of the pattern in the email's subject (Invoice History to its invoice)."""
    notification_pages[template] = tuple(pages)
