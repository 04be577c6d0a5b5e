from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.template.response import TemplateResponse


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Ops look, never edit: the rows are evidence (invoices, payments, audit) or belong to
    the customer, who manages them in the portal. Changes go through admin actions that call
    the same services as the portal."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label="Reason (kept in the organisation's audit log)",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=500,
    )


def reason_asked(
    modeladmin, request, queryset, *, action: str, title: str, intro: str, label: str = ""
):
    """Ops actions that change money or access ask why first
    (docs/architecture.md#decision-ops-actions-that-change-money-or-access-ask-why).

    Returns (reason, None) once the confirmation page was submitted with a reason, or
    (None, the confirmation page) to show; nothing has changed until then.
    """
    submitted = "apply" in request.POST
    form = ReasonForm(request.POST if submitted else None)
    if label:
        form.fields["reason"].label = label
    if submitted and form.is_valid():
        return form.cleaned_data["reason"].strip(), None
    page = TemplateResponse(
        request,
        "admin/reason_action.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": title,
            "intro": intro,
            "form": form,
            "objects": list(queryset),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": modeladmin.model._meta,
        },
    )
    return None, page


def permission_check(codename: str):
    """A `has_<name>_permission` method for `@admin.action(permissions=[...])`."""

    def check(self, request):
        return request.user.has_perm(codename)

    return check


class ValuesWithBlankListFilter(admin.AllValuesFieldListFilter):
    """Django's filter by every value of a field, with the blank value listed as "(blank)":
    Django shows it as a link without text, which a screen reader announces as nothing."""

    def choices(self, changelist):
        for choice in super().choices(changelist):
            if choice["display"] == "":
                choice = {**choice, "display": "(blank)"}
            yield choice
