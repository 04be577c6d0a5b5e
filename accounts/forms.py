from allauth.account.forms import LoginForm as AllauthLoginForm
from allauth.account.forms import SignupForm as AllauthSignupForm
from django import forms
from django.conf import settings
from django.contrib.auth.password_validation import validate_password

from accounts.models import Membership, Organisation, User, time_zone_choices
from accounts.services import ORGANISATION_NAME_MAX
from accounts.tenancy import password_sign_in_refusal


class LoginForm(AllauthLoginForm):
    """Password sign-in, refused for people whose organisations enforce SSO on them."""

    def clean(self):
        cleaned_data = super().clean()
        user = getattr(self, "user", None)
        if user is not None:
            refusal = password_sign_in_refusal(user)
            if refusal:
                raise forms.ValidationError(refusal, code="sso_required")
        return cleaned_data


class SignupForm(AllauthSignupForm):
    """Sign-up: the person and the organisation they create (they become its Admin)."""

    full_name = forms.CharField(label="Your name", max_length=150)
    organisation_name = forms.CharField(
        label="Organisation name",
        max_length=ORGANISATION_NAME_MAX,
        help_text="Your company, as it should appear on invoices. You can change it later.",
    )
    field_order = ["full_name", "email", "password1", "organisation_name"]

    def clean_organisation_name(self):
        name = " ".join(self.cleaned_data["organisation_name"].split())
        if not name:
            raise forms.ValidationError("Enter the organisation name.")
        return name


class InvitationForm(forms.Form):
    email = forms.EmailField(label="Email address", max_length=254)
    role = forms.ChoiceField(
        label="Role",
        choices=Membership.Role.choices,
        initial=Membership.Role.MEMBER,
        help_text="Admin: everything. Billing contact: subscription, billing and invoices. "
        "Member: ProcessFlows and Sync Info, no Settings.",
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Membership.Role.choices)


class OrganisationForm(forms.Form):
    name = forms.CharField(label="Organisation Name", max_length=ORGANISATION_NAME_MAX)
    time_zone = forms.ChoiceField(
        label="Time zone",
        choices=time_zone_choices,
        help_text="Dates on this portal, in emails and on invoices are shown in this zone.",
    )

    def clean_name(self):
        name = " ".join(self.cleaned_data["name"].split())
        if not name:
            raise forms.ValidationError("Enter the organisation name.")
        return name


class TwoFactorPolicyForm(forms.Form):
    policy = forms.ChoiceField(
        label="Who must use two-factor sign-in",
        choices=Organisation.TwoFactorPolicy.choices,
        widget=forms.RadioSelect,
        error_messages={"invalid_choice": "Choose one of the two-factor options."},
        help_text="People who sign in through your single sign-on are not asked.",
    )


class PrimaryEmailForm(forms.Form):
    new_email = forms.EmailField(
        label="New primary email address",
        max_length=254,
        help_text="We send a verification link to this address. The current address stays "
        "primary until the link is used.",
    )


class InvitationSignupForm(forms.Form):
    """Accepting an invitation with no account yet: choose a name and a password."""

    full_name = forms.CharField(label="Your name", max_length=150)
    password = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.email = email
        self.fields["password"].help_text = (
            f"At least 10 characters, not a common password. You will use it with {email} "
            f"to sign in to {settings.PRODUCT_NAME}."
        )

    def clean_password(self):
        password = self.cleaned_data["password"]
        validate_password(
            password,
            user=User(email=self.email, full_name=self.data.get("full_name", "")),
        )
        return password


class BillingRecipientForm(forms.Form):
    email = forms.EmailField(
        label="Email address",
        max_length=254,
        help_text="For example your accounts-payable mailbox. We email it a link to confirm "
        "before it receives anything.",
        error_messages={"invalid": "Enter a valid email address, such as ap@example.com."},
    )
