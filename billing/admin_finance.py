"""Ops > Finance export: a month's or a quarter's invoices and credit notes as CSV, for the
accountant (docs/architecture.md#decision-the-ops-charts-and-the-finance-export).

Reached from the ops dashboard's form; staff with billing.export_finance only (Billing staff,
support.staff). The admin site (portal.sites) routes it.
"""

import calendar
from datetime import UTC

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.http import require_safe

from billing.finance_export import (
    ExportPeriod,
    PeriodError,
    export_filename,
    export_period,
    finance_export_csv,
)
from core.calendar_months import month_start, months_after

EXPORT_PERMISSION = "billing.export_finance"
MONTHS = [(n, f"{n:02d} – {calendar.month_name[n]}") for n in range(1, 13)]
QUARTERS = [
    (1, "Q1 (January – March)"),
    (2, "Q2 (April – June)"),
    (3, "Q3 (July – September)"),
    (4, "Q4 (October – December)"),
]


class FinanceExportForm(forms.Form):
    """Month or quarter, its year, and which one; the other choice is ignored."""

    period = forms.ChoiceField(
        label="Period",
        choices=[("month", "A month"), ("quarter", "A quarter")],
        widget=forms.RadioSelect,
        error_messages={"required": "Choose a month or a quarter."},
    )
    year = forms.IntegerField(
        label="Year",
        min_value=2000,
        max_value=9998,
        error_messages={
            "required": "Enter a year, e.g. 2026.",
            "invalid": "Enter a year, e.g. 2026.",
        },
    )
    month = forms.TypedChoiceField(
        label="Month", choices=[("", "—"), *MONTHS], coerce=int, required=False, empty_value=None
    )
    quarter = forms.TypedChoiceField(
        label="Quarter",
        choices=[("", "—"), *QUARTERS],
        coerce=int,
        required=False,
        empty_value=None,
    )

    def __init__(self, *args, now, **kwargs):
        super().__init__(*args, **kwargs)
        self.now = now

    def clean(self):
        data = super().clean()
        kind, year = data.get("period"), data.get("year")
        if kind is None or year is None:
            return data
        number = data.get(kind)
        if number is None:
            self.add_error(kind, f"Choose which {kind}.")
            return data
        try:
            data["export_period"] = export_period(kind=kind, year=year, number=number, now=self.now)
        except PeriodError as error:
            raise forms.ValidationError(str(error)) from None
        return data


def initial_for(now) -> dict:
    """Last month: what the accountant asks for most."""
    previous = months_after(month_start(now), -1)
    return {
        "period": "month",
        "year": previous.year,
        "month": previous.month,
        "quarter": (now.astimezone(UTC).month - 1) // 3 + 1,
    }


@require_safe
def finance_export_view(request, *, admin_site):
    """Without `period` the form; with a valid one the CSV, streamed; otherwise the form with
    its messages (400) and nothing streamed."""
    if not request.user.has_perm(EXPORT_PERMISSION):
        raise PermissionDenied
    now = timezone.now()
    if "period" not in request.GET:
        form = FinanceExportForm(initial=initial_for(now), now=now)
    else:
        form = FinanceExportForm(request.GET, now=now)
        if form.is_valid():
            period: ExportPeriod = form.cleaned_data["export_period"]
            response = StreamingHttpResponse(
                finance_export_csv(period=period), content_type="text/csv; charset=utf-8"
            )
            response["Content-Disposition"] = f'attachment; filename="{export_filename(period)}"'
            return response
    return TemplateResponse(
        request,
        "admin/finance_export.html",
        {**admin_site.each_context(request), "title": "Finance export", "form": form},
        status=400 if form.errors else 200,
    )
