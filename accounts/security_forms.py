"""The forms of the Security page's two-factor steps."""

from allauth.mfa.adapter import get_adapter
from allauth.mfa.base.internal.flows import check_rate_limit
from allauth.mfa.models import Authenticator
from django import forms


class DeactivateTOTPForm(forms.Form):
    """Removing the authenticator app asks for a current code from it, or an unused recovery
    code: a session left open must not be enough to weaken the account. Also allauth's own
    deactivation form (settings.MFA_FORMS), so its URL asks too."""

    code = forms.CharField(
        label="Code from your authenticator app, or a recovery code",
        max_length=32,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "spellcheck": "false"}
        ),
    )

    def __init__(self, *args, authenticator: Authenticator, **kwargs):
        super().__init__(*args, **kwargs)
        self.authenticator = authenticator
        # allauth's view binds the form to {} on GET to show refusals early: nothing was typed
        # yet, so nothing is wrong yet.
        if kwargs.get("data") == {} and not args:
            self.is_bound = False

    def clean_code(self) -> str:
        adapter = get_adapter()
        if not adapter.can_delete_authenticator(self.authenticator):
            raise adapter.validation_error("cannot_delete_authenticator")
        user = self.authenticator.user
        # Wrong codes count in the sign-in rate limit, as at sign-in.
        clear_rate_limit = check_rate_limit(user)
        code = self.cleaned_data["code"].strip().replace(" ", "")
        if not _code_is_valid(user_id=user.pk, totp=self.authenticator, code=code):
            raise forms.ValidationError(
                "That code is not valid. Enter the current code from your authenticator app, "
                "or an unused recovery code."
            )
        clear_rate_limit()
        return code


def _code_is_valid(*, user_id: int, totp: Authenticator, code: str) -> bool:
    if totp.wrap().validate_code(code):
        return True
    recovery = Authenticator.objects.filter(
        user_id=user_id, type=Authenticator.Type.RECOVERY_CODES
    ).first()
    return recovery is not None and recovery.wrap().validate_code(code)
