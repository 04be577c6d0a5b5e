from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction
from django.utils import timezone

from accounts.audit import Actor
from accounts.emails import email_queue
from accounts.services import organisation_create
from accounts.two_factor import ALLAUTH_NOTIFICATIONS, two_factor_record
from core.http import client_ip


class AccountAdapter(DefaultAccountAdapter):
    """The one place where allauth is customised for the portal."""

    def save_user(self, request, user, form, commit=True):
        # Sign-up creates the user and their organisation together; the user is its Admin.
        with transaction.atomic():
            user.full_name = form.cleaned_data.get("full_name", "")
            user.email = user.email.lower()
            user = super().save_user(request, user, form, commit=True)
            organisation_create(
                name=form.cleaned_data["organisation_name"],
                owner=user,
                time_zone=form.cleaned_data.get("time_zone") or "UTC",
                currency=form.cleaned_data.get("currency") or "USD",
                ip_address=client_ip(request),
                now=timezone.now(),
            )
        return user

    def send_mail(self, template_prefix, email, context):
        # allauth's emails (verification, password reset) go through our outbox like every other.
        message = self.render_mail(template_prefix, email, context)
        body_html = ""
        for content, mimetype in getattr(message, "alternatives", []):
            if mimetype == "text/html":
                body_html = content
        email_queue(
            to=email,
            subject=message.subject,
            body_text=message.body,
            body_html=body_html,
            template=template_prefix,
        )

    def send_notification_mail(self, template_prefix, user, context=None, email=None):
        # allauth.mfa reports each change of a second factor here, once: it becomes our audit
        # rows and our email
        # (docs/architecture.md#decision-two-factor-sign-in-builds-on-allauth-mfa).
        change = ALLAUTH_NOTIFICATIONS.get(template_prefix)
        if change is None:
            return super().send_notification_mail(template_prefix, user, context, email)
        actor = Actor(user=user, ip_address=client_ip(self.request) if self.request else None)
        two_factor_record(user=user, change=change, actor=actor, now=timezone.now())
        return None

    def format_email_subject(self, subject):
        from django.conf import settings

        return f"{settings.PRODUCT_NAME}: {subject}"
