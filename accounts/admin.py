"""Django admin for ops staff: organisations, users, memberships, invitations, audit log, emails."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import Count, Q
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import (
    AuditEvent,
    BillingRecipient,
    Invitation,
    Membership,
    OutgoingEmail,
    PrimaryEmailChange,
    User,
)
from accounts.services import (
    membership_change_role,
    membership_deactivate,
    membership_reactivate,
)
from accounts.two_factor import two_factor_reset, two_factor_status
from core.admin import reason_asked
from core.errors import ServiceError
from core.http import client_ip


class UserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "full_name")


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ("organisation", "user", "role", "status", "created_at")
    readonly_fields = ("organisation", "user", "role", "status", "created_at")
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserEditForm
    add_form = UserCreationForm
    ordering = ("email",)
    list_display = ("email", "full_name", "is_staff", "is_active", "date_joined", "last_login")
    list_filter = ("is_staff", "is_active", "is_superuser")
    search_fields = ("email", "full_name")
    readonly_fields = ("date_joined", "last_login", "two_factor")
    inlines = [MembershipInline]
    actions = ["reset_two_factor"]
    fieldsets = (
        (None, {"fields": ("email", "full_name", "password", "two_factor")}),
        (
            "Access",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "full_name", "password1", "password2")}),
    )

    @admin.display(description="Two-factor sign-in")
    def two_factor(self, obj):
        # Facts only: ops never see a secret or a code.
        return str(two_factor_status(user=obj)) if obj.pk else ""

    def has_reset_two_factor_permission(self, request):
        # Changing how someone signs in is access, not money: only those who may change users
        # (superusers), never the view-only "Billing staff" group (support/staff.py).
        return request.user.has_perm("accounts.change_user")

    @admin.action(
        description="Reset two-factor sign-in (removes it, signs them out)",
        permissions=["reset_two_factor"],
    )
    def reset_two_factor(self, request, queryset):
        reason, page = reason_asked(
            self,
            request,
            queryset,
            action="reset_two_factor",
            title="Reset two-factor sign-in",
            intro=(
                "Their authenticator app, security keys and recovery codes are removed and every "
                "session of theirs ends. They sign in with their password and set up again."
            ),
        )
        if page is not None:
            return page
        actor = Actor(user=request.user, ip_address=client_ip(request))
        done = 0
        for user in queryset:
            if two_factor_reset(user=user, actor=actor, reason=reason, now=timezone.now()):
                done += 1
        self.message_user(request, f"Two-factor sign-in reset for {done} user(s).")
        return None


# Registered by portal.admin, which adds the actions of the apps above accounts (the
# configuration export): no app registers over, or patches, another app's admin.
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "primary_email", "status", "currency", "members", "created_at")
    list_filter = ("status", "currency")
    search_fields = ("name", "slug", "primary_email")
    readonly_fields = ("slug", "created_at", "created_by")
    list_select_related = ("created_by",)
    inlines = [MembershipInline]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(active_members=Count("memberships", filter=Q(memberships__status="active")))
        )

    @admin.display(description="Active users", ordering="active_members")
    def members(self, obj):
        return obj.active_members


class MembershipAdminForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ("role",)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Role changes and (de)activation go through the same services as the portal (audited)."""

    form = MembershipAdminForm
    list_display = ("user", "organisation", "role", "status", "created_at")
    list_filter = ("role", "status")
    search_fields = ("user__email", "user__full_name", "organisation__name", "organisation__slug")
    list_select_related = ("user", "organisation")
    readonly_fields = (
        "public_id",
        "organisation",
        "user",
        "status",
        "created_at",
        "deactivated_at",
    )
    actions = ["deactivate", "reactivate"]

    def has_add_permission(self, request):
        return False  # people join through invitations, which verify their email address

    def has_delete_permission(self, request, obj=None):
        return False  # removal goes through the portal, which keeps the last Admin

    def save_model(self, request, obj, form, change):
        try:
            membership_change_role(
                membership=obj,
                actor=Actor(user=request.user, ip_address=client_ip(request)),
                role=form.cleaned_data["role"],
                now=timezone.now(),
            )
        except ServiceError as error:
            self.message_user(request, error.message, level=messages.ERROR)

    def _run(self, request, queryset, service, verb):
        actor = Actor(user=request.user, ip_address=client_ip(request))
        done = 0
        for membership in queryset.select_related("user", "organisation"):
            try:
                service(membership=membership, actor=actor, now=timezone.now())
                done += 1
            except ServiceError as error:
                self.message_user(request, error.message, level=messages.ERROR)
        if done:
            self.message_user(request, f"{done} membership(s) {verb}.")

    @admin.action(description="Deactivate selected users (signs them out)")
    def deactivate(self, request, queryset):
        self._run(request, queryset, membership_deactivate, "deactivated")

    @admin.action(description="Reactivate selected users")
    def reactivate(self, request, queryset):
        self._run(request, queryset, membership_reactivate, "reactivated")


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "organisation", "role", "status", "invited_by", "expires_at")
    list_filter = ("status", "role")
    search_fields = ("email", "organisation__name", "organisation__slug")
    list_select_related = ("organisation", "invited_by")
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(BillingRecipient)
class BillingRecipientAdmin(admin.ModelAdmin):
    """Read-only: customers add, confirm and remove them (Settings > Billing)."""

    list_display = ("email", "organisation", "created_at", "confirmed_at", "removed_at")
    search_fields = ("email", "organisation__name", "organisation__slug")
    list_select_related = ("organisation",)
    exclude = ("token_hash",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(PrimaryEmailChange)
class PrimaryEmailChangeAdmin(admin.ModelAdmin):
    list_display = ("organisation", "old_email", "new_email", "status", "created_at", "verified_at")
    list_filter = ("status",)
    search_fields = ("organisation__name", "old_email", "new_email")
    list_select_related = ("organisation",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "organisation",
        "actor_email",
        "action",
        "target_label",
        "ip_address",
    )
    list_filter = ("action",)
    search_fields = ("organisation__name", "organisation__slug", "actor_email", "target_label")
    list_select_related = ("organisation",)
    date_hierarchy = "created_at"

    # The audit log is evidence: nobody edits or deletes it, ops included.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(OutgoingEmail)
class OutgoingEmailAdmin(admin.ModelAdmin):
    list_display = ("created_at", "to_email", "subject", "organisation", "status", "attempts")
    list_filter = ("status", "template")
    search_fields = ("to_email", "subject", "organisation__name")
    list_select_related = ("organisation",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
