from django.conf import settings
from django.utils.functional import SimpleLazyObject

from accounts.roles import sections_for
from accounts.selectors import memberships_of_user, notification_unread_count


def portal(request):
    """Brand, the current organisation, the organisation menu and the Settings navigation."""
    context = {"product_name": settings.PRODUCT_NAME}
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return context
    membership = getattr(request, "membership", None)
    context["current_membership"] = membership
    context["current_organisation"] = getattr(request, "organisation", None)
    # Lazy: the query runs only when the top bar renders the menu.
    context["user_memberships"] = SimpleLazyObject(lambda: list(memberships_of_user(user=user)))
    if membership is not None:
        context["settings_sections"] = sections_for(membership.role)
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
