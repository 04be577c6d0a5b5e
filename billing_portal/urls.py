from django.contrib import admin
from django.urls import include, path

from billing.webhook_views import stripe_webhook
from core.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("webhooks/stripe/", stripe_webhook, name="stripe_webhook"),
    # Before accounts: the Overview at /o/<org_slug>/ joins every app (docs/architecture.md#portal).
    path("", include("portal.urls")),
    path("", include("accounts.urls")),
    path("", include("subscriptions.urls")),
    path("", include("billing.urls")),
    path("", include("sso.urls")),
    path("", include("support.urls")),
    path("", include("retention.urls")),
    path("", include("usage.urls")),
]
