from functools import lru_cache

from django.conf import settings
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils.functional import SimpleLazyObject

from accounts import hooks
from accounts.roles import sections_for, settings_sections
from accounts.selectors import memberships_of_user, notification_unread_count


def portal(request):
    """Brand, the current organisation, the organisation menu and the Settings navigation.

    Runs no query: the organisation and membership are the ones tenant_view put on the request,
    with the organisation menu read in the same query (accounts.selectors.membership_for_user);
    elsewhere the menu is lazy, and so is the unread marker (one query each, when the top bar
    renders them).
    """
    context = {"product_name": settings.PRODUCT_NAME}
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return context
    routing = (get_script_prefix(), get_urlconf() or settings.ROOT_URLCONF)
    context["portal_urls"] = _portal_urls(*routing)
    membership = getattr(request, "membership", None)
    context["current_membership"] = membership
    context["current_organisation"] = getattr(request, "organisation", None)
    menu = getattr(membership, "menu_memberships", None)
    if menu is None:
        # Lazy: the query runs only when the top bar renders the menu.
        menu = SimpleLazyObject(lambda: list(memberships_of_user(user=user)))
    context["user_memberships"] = menu
    if membership is not None:
        urls = _organisation_urls(membership.organisation.slug, *routing)
        sections = sections_for(membership.role)
        context["organisation_urls"] = urls
        context["settings_sections"] = sections
        context["settings_links"] = [(section, urls[section.key]) for section in sections]
        context["settings_section"] = getattr(request, "settings_section", None)
        # The unread marker in the top bar: one query, and only when the top bar renders it.
        # The Notifications page itself sets 0 (it has just marked everything read).
        unread = getattr(request, "notifications_unread", None)
        if unread is None:
            unread = SimpleLazyObject(
                lambda: notification_unread_count(membership=membership, user=user)
            )
        context["notifications_unread"] = unread
    return context


# The top bar and the Settings navigation link the same pages on every request: each process
# reverses them once per organisation (reverse() was a third of the page frame's template time).
# Keyed by everything reverse() depends on, so a changed script prefix or URLconf misses.


@lru_cache(maxsize=8)
def _portal_urls(script_prefix: str, urlconf: str) -> dict[str, str]:
    return {
        "home": reverse("accounts:home"),
        "change_password": reverse("account_change_password"),
        "security": reverse("accounts:security"),
        "logout": reverse("account_logout"),
    }


@lru_cache(maxsize=4096)
def _organisation_urls(slug: str, script_prefix: str, urlconf: str) -> dict[str, str]:
    return {
        # The pages of the apps above accounts (plugged in by portal.frame), the Overview first.
        **{key: reverse(name, args=[slug]) for key, name in hooks.menu_url_names.items()},
        "notifications": reverse("accounts:notifications", args=[slug]),
        "settings": reverse("accounts:settings", args=[slug]),
        **{section.key: reverse(section.url_name, args=[slug]) for section in settings_sections()},
    }
