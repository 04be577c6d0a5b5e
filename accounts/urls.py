from django.urls import include, path

from accounts import security_views, session_views, views

app_name = "accounts"

public_urlpatterns = [
    path("", views.home, name="home"),
    path("organisations/", views.organisations, name="organisations"),
    path("invitations/<str:token>/", views.invitation_accept_view, name="invitation_accept"),
    path(
        "verify-primary-email/<str:token>/",
        views.primary_email_verify,
        name="primary_email_verify",
    ),
    # The link a billing recipient confirms its address with (GET asks, POST confirms).
    path(
        "billing-recipients/confirm/<str:token>/",
        views.billing_recipient_confirm_view,
        name="billing_recipient_confirm",
    ),
    # Security: the user's own two-factor sign-in and sessions (accounts/security_views.py).
    path("account/security/", security_views.security, name="security"),
    path("account/security/app/", security_views.totp_activate_view, name="security_totp_activate"),
    path(
        "account/security/app/remove/",
        security_views.totp_deactivate_view,
        name="security_totp_deactivate",
    ),
    path(
        "account/security/recovery-codes/",
        security_views.recovery_codes_view,
        name="security_recovery_codes",
    ),
    path(
        "account/security/recovery-codes/regenerate/",
        security_views.recovery_codes_regenerate,
        name="security_recovery_codes_regenerate",
    ),
    # Signing sessions out from Security (accounts.session_views).
    path(
        "account/security/sessions/<uuid:session_id>/end/",
        session_views.session_end,
        name="session_end",
    ),
    path(
        "account/security/sessions/end-others/",
        session_views.sessions_end_others,
        name="sessions_end_others",
    ),
]

organisation_urlpatterns = [
    path("notifications/", views.notifications, name="notifications"),
    path("settings/", views.settings_index, name="settings"),
    path("settings/users/", views.users, name="users"),
    path("settings/users/invite/", views.user_invite, name="user_invite"),
    path("settings/users/<uuid:member_id>/", views.member_detail, name="member_detail"),
    path("settings/users/<uuid:member_id>/role/", views.member_role, name="member_role"),
    path(
        "settings/users/<uuid:member_id>/deactivate/",
        views.member_deactivate,
        name="member_deactivate",
    ),
    path(
        "settings/users/<uuid:member_id>/reactivate/",
        views.member_reactivate,
        name="member_reactivate",
    ),
    path("settings/users/<uuid:member_id>/remove/", views.member_remove, name="member_remove"),
    path(
        "settings/invitations/<uuid:invitation_id>/resend/",
        views.invitation_resend_view,
        name="invitation_resend",
    ),
    path(
        "settings/invitations/<uuid:invitation_id>/revoke/",
        views.invitation_revoke_view,
        name="invitation_revoke",
    ),
    path("settings/organisation/", views.organisation_settings, name="organisation"),
    path(
        "settings/organisation/two-factor/",
        views.organisation_two_factor,
        name="organisation_two_factor",
    ),
    path(
        "settings/organisation/primary-email/",
        views.organisation_primary_email,
        name="organisation_primary_email",
    ),
    path("settings/audit-log/", views.audit_log, name="audit_log"),
]

# Every organisation page lives under /o/<org_slug>/ and is wrapped in @tenant_view. The
# Overview at /o/<org_slug>/ itself joins every app, so it is portal's (portal.urls).
urlpatterns = [
    *public_urlpatterns,
    path("o/<slug:org_slug>/", include(organisation_urlpatterns)),
]
