from django import forms

from accounts.models import User
from retention.models import DataDeletionRequest


class DeletionRequestForm(forms.Form):
    """Settings > Privacy > Data Deletion Request. The person list is limited to the
    organisation's users, so a tampered id is a form error, never another tenant's user."""

    scope = forms.ChoiceField(
        label="What should be deleted?",
        choices=DataDeletionRequest.Scope.choices,
        widget=forms.RadioSelect,
    )
    subject = forms.ModelChoiceField(
        label="Person",
        queryset=User.objects.none(),
        required=False,
        empty_label="Choose a user",
        help_text="Only for one person's personal data.",
    )
    confirm = forms.BooleanField(
        label="I understand that all of the organisation's data will be deleted for good, "
        "except invoices and payment records.",
        required=False,
    )
    reason = forms.CharField(
        label="Reason (optional)", required=False, max_length=2000, widget=forms.Textarea
    )

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["subject"].queryset = User.objects.filter(
            memberships__organisation=organisation
        ).order_by("email")
        self.fields["subject"].label_from_instance = lambda user: (
            f"{user.full_name} ({user.email})" if user.full_name else user.email
        )

    def clean(self):
        cleaned = super().clean()
        scope = cleaned.get("scope")
        if (
            scope == DataDeletionRequest.Scope.PERSON
            and not cleaned.get("subject")
            and "subject" not in self.errors
        ):
            self.add_error("subject", "Choose the person whose data is deleted.")
        if scope == DataDeletionRequest.Scope.ORGANISATION and not cleaned.get("confirm"):
            self.add_error("confirm", "Tick the box to confirm deleting all of the data.")
        return cleaned
