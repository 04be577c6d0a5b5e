from django import forms
from django.core.exceptions import ValidationError

from subscriptions.models import Connection, Environment
from subscriptions.selectors import environment_choices
from subscriptions.services import NAME_MAX

WRONG_ENVIRONMENT = "Choose one of your organisation's environments."
WRONG_CONNECTION = "Choose one of your organisation's connections."


class PublicIdChoiceField(forms.ModelChoiceField):
    """A choice among the given rows by public id; any other value is an invalid choice."""

    def to_python(self, value):
        try:
            return super().to_python(value)
        except ValidationError as error:
            if error.code == "invalid_choice":
                raise
            # Not even a UUID (Django reports the UUID format): the same answer as a wrong id.
            raise ValidationError(
                self.error_messages["invalid_choice"], code="invalid_choice"
            ) from error


class EnvironmentChoiceField(PublicIdChoiceField):
    def label_from_instance(self, obj):
        return obj.name


class ConnectionChoiceField(PublicIdChoiceField):
    def label_from_instance(self, obj):
        return f"{obj.name} ({obj.application}) · {obj.environment.name}"


class EnvironmentForm(forms.Form):
    prefix = "environment"

    name = forms.CharField(
        label="Environment name",
        max_length=NAME_MAX["environment"],
        help_text="For example Production or Test.",
    )


class ConnectionForm(forms.Form):
    """A new app connection. The environment list holds only the organisation's own ones, so
    an id from elsewhere (a tampered form) is refused as an invalid choice."""

    prefix = "connection"

    name = forms.CharField(label="Connection name", max_length=NAME_MAX["connection"])
    application = forms.CharField(
        label="Application",
        max_length=NAME_MAX["application"],
        help_text="The app this connection reaches, e.g. Salesforce or SAP Business One.",
    )
    environment = EnvironmentChoiceField(
        label="Environment",
        queryset=Environment.objects.none(),
        to_field_name="public_id",
        empty_label=None,
        error_messages={"invalid_choice": WRONG_ENVIRONMENT},
    )

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["environment"].queryset = environment_choices(organisation=organisation)


class ProcessFlowForm(forms.Form):
    prefix = "flow"

    name = forms.CharField(label="ProcessFlow name", max_length=NAME_MAX["process_flow"])
    environment = EnvironmentChoiceField(
        label="Environment",
        queryset=Environment.objects.none(),
        to_field_name="public_id",
        empty_label=None,
        error_messages={"invalid_choice": WRONG_ENVIRONMENT},
        help_text="Where the ProcessFlow runs.",
    )
    source = ConnectionChoiceField(
        label="Source connection",
        queryset=Connection.objects.none(),
        to_field_name="public_id",
        required=False,
        empty_label="None yet",
        error_messages={"invalid_choice": WRONG_CONNECTION},
        help_text="Optional. A connection of the same environment.",
    )
    target = ConnectionChoiceField(
        label="Target connection",
        queryset=Connection.objects.none(),
        to_field_name="public_id",
        required=False,
        empty_label="None yet",
        error_messages={"invalid_choice": WRONG_CONNECTION},
        help_text="Optional. A connection of the same environment.",
    )

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["environment"].queryset = environment_choices(organisation=organisation)
        connections = (
            Connection.objects.filter(organisation=organisation)
            .select_related("environment")
            .order_by("environment__name", "name", "pk")
        )
        self.fields["source"].queryset = connections
        self.fields["target"].queryset = connections


class DowngradeForm(forms.Form):
    """The ProcessFlows to keep active after a downgrade, among the organisation's active ones.

    An id that is not one of them (another organisation's, a paused one, a tampered form) is
    an invalid choice; the service checks the new plan's limit.
    """

    keep = forms.MultipleChoiceField(
        label="ProcessFlows to keep active",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "invalid_choice": (
                "Choose the ProcessFlows to keep among your organisation's active ProcessFlows."
            )
        },
    )

    def __init__(self, *args, flows, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["keep"].choices = [(str(flow.public_id), flow.name) for flow in flows]
