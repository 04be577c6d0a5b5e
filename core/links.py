"""Absolute links and customer-facing dates for emails sent outside a request (jobs)."""

from datetime import datetime

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format


def absolute_url(name: str, *args) -> str:
    """SITE_URL + the path of a named URL, e.g. for links in emails."""
    return settings.SITE_URL + reverse(name, args=args)


def organisation_day(moment: datetime, organisation) -> str:
    """A date as customers read it, in the organisation's time zone: "1 December 2026"."""
    return date_format(timezone.localtime(moment, organisation.tzinfo), "j F Y")
