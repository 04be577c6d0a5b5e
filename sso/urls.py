from django.urls import include, path

from sso import views

app_name = "sso"

organisation_urlpatterns = [
    path("settings/sso/", views.settings, name="settings"),
    path("settings/sso/identity-provider/", views.idp_save, name="idp_save"),
    path("settings/sso/domains/", views.domain_add, name="domain_add"),
    path(
        "settings/sso/domains/<uuid:domain_id>/remove/",
        views.domain_remove,
        name="domain_remove",
    ),
    path("settings/sso/new-users/", views.provisioning_save, name="provisioning_save"),
    path("settings/sso/enforcement/", views.enforcement_save, name="enforcement_save"),
]

# Public SAML endpoints. The organisation is named `organisation_slug` here, not `org_slug`:
# these are not organisation pages (no membership needed) and tests/sso covers them.
public_urlpatterns = [
    path("", views.sign_in, name="sign_in"),
    path("<slug:organisation_slug>/metadata/", views.metadata, name="metadata"),
    path("<slug:organisation_slug>/login/", views.login_start, name="login"),
    path("<slug:organisation_slug>/test/", views.test_start, name="test"),
    path("<slug:organisation_slug>/acs/", views.acs, name="acs"),
]

urlpatterns = [
    path("o/<slug:org_slug>/", include(organisation_urlpatterns)),
    path("sso/", include(public_urlpatterns)),
]
