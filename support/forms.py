from django import forms

from support.models import SupportTicket
from support.services import ATTACHMENT_MAX_BYTES, MESSAGE_MAX_CHARS, Upload


class _AttachmentMixin:
    def clean_attachment(self):
        attachment = self.cleaned_data.get("attachment")
        if attachment is None:
            return None
        # Refused on the size the upload declares, before reading it into memory.
        if attachment.size > ATTACHMENT_MAX_BYTES:
            raise forms.ValidationError(
                f"The attachment is {attachment.size / 1_048_576:.1f} MB; the limit is 5 MB."
            )
        return Upload(filename=attachment.name, data=attachment.read())


class TicketForm(_AttachmentMixin, forms.Form):
    category = forms.ChoiceField(label="Category", choices=SupportTicket.Category.choices)
    subject = forms.CharField(label="Subject", max_length=200)
    invoice_number = forms.CharField(
        label="Invoice number (if about an invoice)",
        max_length=32,
        required=False,
        help_text="As on the invoice, e.g. INV-2026-000123.",
    )
    message = forms.CharField(
        label="Message",
        # Checked by the service, so an overlong message gets the same clear words everywhere.
        widget=forms.Textarea(attrs={"rows": 8, "maxlength": MESSAGE_MAX_CHARS}),
    )
    contact_email = forms.EmailField(label="Email address for our answer", max_length=254)
    attachment = forms.FileField(
        label="Attachment (optional)",
        required=False,
        help_text="PDF, PNG, JPEG, TXT or CSV, up to 5 MB.",
    )

    def __init__(self, *args, can_name_invoice: bool, **kwargs):
        super().__init__(*args, **kwargs)
        if not can_name_invoice:
            del self.fields["invoice_number"]


class ReplyForm(_AttachmentMixin, forms.Form):
    message = forms.CharField(
        label="Your reply", widget=forms.Textarea(attrs={"rows": 5, "maxlength": MESSAGE_MAX_CHARS})
    )
    attachment = forms.FileField(
        label="Attachment (optional)",
        required=False,
        help_text="PDF, PNG, JPEG, TXT or CSV, up to 5 MB.",
    )
