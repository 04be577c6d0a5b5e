from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django import forms

from subscriptions.forms import WRONG_ENVIRONMENT, EnvironmentChoiceField
from subscriptions.models import Environment, ProcessFlow
from usage.alerts import MAX_PERCENT, MIN_PERCENT, PERCENT_RANGE
from usage.models import SyncInfo

WRONG_FLOW = "Choose one of your organisation's ProcessFlows."
MAX_EXPORT_DAYS = 400


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs=None):
        super().__init__(attrs, format="%Y-%m-%d")


class SyncInfoFilterForm(forms.Form):
    """The Sync Info filters: ProcessFlow, status, and a range of days in the organisation's zone.

    The flow list holds only the organisation's own ProcessFlows (given by the view, which
    also uses them for the names in the table), so a tampered id is an invalid choice.
    """

    flow = forms.ChoiceField(
        label="ProcessFlow", required=False, error_messages={"invalid_choice": WRONG_FLOW}
    )
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "All statuses"), *SyncInfo.Status.choices]
    )
    date_from = forms.DateField(label="From", required=False, widget=DateInput())
    date_to = forms.DateField(label="To", required=False, widget=DateInput())

    def __init__(self, *args, flows: list[ProcessFlow], **kwargs):
        super().__init__(*args, **kwargs)
        self._flows = {str(flow.public_id): flow for flow in flows}
        self.fields["flow"].choices = [
            ("", "All ProcessFlows"),
            *((key, f"{flow.name} · {flow.environment.name}") for key, flow in self._flows.items()),
        ]

    def clean_flow(self) -> ProcessFlow | None:
        value = self.cleaned_data["flow"]
        return self._flows[value] if value else None

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and end < start:
            self.add_error("date_to", "The end date must be on or after the start date.")
        return cleaned

    def bounds(self, zone: ZoneInfo) -> tuple[datetime | None, datetime | None]:
        """[start, end) as instants: from the start of the first day to the end of the last
        day, both in the organisation's time zone."""
        start, end = self.cleaned_data.get("date_from"), self.cleaned_data.get("date_to")
        return (
            _day_start(start, zone) if start else None,
            _day_start(end + timedelta(days=1), zone) if end else None,
        )


class SyncInfoExportForm(SyncInfoFilterForm):
    """Sync Info > Export (article section 12): a required range of at most 400 days."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("date_from", "date_to"):
            self.fields[name].required = True
            self.fields[name].error_messages["required"] = "Pick a date."
        self.fields[
            "date_to"
        ].help_text = f"Both days included; at most {MAX_EXPORT_DAYS} days per file."

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and end >= start and (end - start).days + 1 > MAX_EXPORT_DAYS:
            self.add_error(
                "date_to",
                f"Export at most {MAX_EXPORT_DAYS} days at a time; this range has "
                f"{(end - start).days + 1} days.",
            )
        return cleaned


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


class ApiKeyForm(forms.Form):
    """A new API key for one of the organisation's environments (a tampered id is refused)."""

    environment = EnvironmentChoiceField(
        label="Environment",
        queryset=Environment.objects.none(),
        to_field_name="public_id",
        empty_label=None,
        error_messages={"invalid_choice": WRONG_ENVIRONMENT},
        help_text="The key sends Sync Info for this environment's ProcessFlows only.",
    )
    name = forms.CharField(
        label="Key name",
        max_length=80,
        help_text="Where the key is used, e.g. the server of your integration runtime.",
    )

    def __init__(self, *args, environments, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["environment"].queryset = environments


class AlertThresholdForm(forms.Form):
    """A usage alert to add: a whole percentage of the monthly limit (the service checks the
    range again, and duplicates and the maximum under the organisation lock)."""

    percent = forms.IntegerField(
        label="Alert at (% of the monthly limit)",
        min_value=MIN_PERCENT,
        max_value=MAX_PERCENT,
        error_messages={
            "required": PERCENT_RANGE,
            "invalid": PERCENT_RANGE,
            "min_value": PERCENT_RANGE,
            "max_value": PERCENT_RANGE,
        },
        help_text=f"A whole number from {MIN_PERCENT} to {MAX_PERCENT}, e.g. 50, 90 or 150.",
        widget=forms.NumberInput(attrs={"step": 1, "inputmode": "numeric"}),
    )


class ForecastAlertForm(forms.Form):
    """Switch the forecast alert on or off: the button says which."""

    forecast = forms.ChoiceField(
        choices=[("on", "On"), ("off", "Off")],
        error_messages={"required": "Choose on or off.", "invalid_choice": "Choose on or off."},
    )
