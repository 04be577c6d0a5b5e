from django import forms

from accounts.models import Membership, User
from sso.models import SsoConfiguration
from sso.provisioning import PROVISION_ROLES


class IdentityProviderForm(forms.Form):
    idp_type = forms.ChoiceField(
        label="Identity Provider",
        choices=SsoConfiguration.IdpType.choices,
        widget=forms.RadioSelect,
    )
    metadata_url = forms.URLField(
        label="IdP Metadata URL",
        required=False,
        max_length=1000,
        assume_scheme="https",
        help_text="We fetch it now and again every day, so certificate renewals reach us.",
    )
    metadata_xml = forms.CharField(
        label="or IdP Metadata XML",
        required=False,
        max_length=1_000_000,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text="Paste the whole XML document if your IdP gives no URL.",
    )

    def clean(self):
        cleaned_data = super().clean()
        if not self.errors and not (
            cleaned_data.get("metadata_url") or (cleaned_data.get("metadata_xml") or "").strip()
        ):
            raise forms.ValidationError("Enter the IdP metadata URL or paste its XML.")
        return cleaned_data


class DomainForm(forms.Form):
    domain = forms.CharField(
        label="Email domain",
        max_length=253,
        help_text="People whose email ends in @this-domain are sent to your IdP.",
    )


class ProvisioningForm(forms.Form):
    provision_users = forms.BooleanField(
        label="Create users on first sign-in",
        required=False,
        help_text="Off: only users you invited can sign in. On: anyone from your domains whom "
        "your IdP lets in gets an account.",
    )
    provision_role = forms.ChoiceField(
        label="Role of new users",
        choices=[(role.value, role.label) for role in PROVISION_ROLES],
        initial=Membership.Role.MEMBER,
    )


class EnforcementForm(forms.Form):
    backup_admin = forms.ModelChoiceField(
        label="Backup admin (keeps password sign-in)",
        queryset=User.objects.none(),
        required=False,
        empty_label="Choose an Admin",
    )
    enforced = forms.BooleanField(label="Enforce SSO for all users", required=False)

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        # Only this organisation's active Admins can be chosen: no other user id is accepted.
        self.fields["backup_admin"].queryset = User.objects.filter(
            memberships__organisation=organisation,
            memberships__role=Membership.Role.ADMIN,
            memberships__status=Membership.Status.ACTIVE,
        ).order_by("email")
        self.fields["backup_admin"].label_from_instance = lambda user: (
            f"{user.full_name} ({user.email})" if user.full_name else user.email
        )


class SignInForm(forms.Form):
    email = forms.EmailField(
        label="Work email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
