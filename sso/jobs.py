from celery.schedules import crontab

from core.jobs import scheduled_job
from sso.attempts import housekeeping
from sso.certificates import certificate_expiry_notify, metadata_refresh_due


# Daily, before the certificate check, so a certificate renewed at the IdP is seen first.
@scheduled_job(name="sso_metadata_refresh", schedule=crontab(hour="4", minute="0"), order=60)
def sso_metadata_refresh(*, now):
    """Refresh IdP metadata fetched from a URL."""
    result = metadata_refresh_due(now=now)
    return f"{result['refreshed']} IdP metadata refreshed, {result['failed']} failed"


@scheduled_job(name="sso_certificate_expiry", schedule=crontab(hour="8", minute="5"), order=61)
def sso_certificate_expiry(*, now):
    """Warn Admins of IdP signing certificates that expire soon."""
    return f"{certificate_expiry_notify(now=now)} certificate expiry email(s) queued"


@scheduled_job(name="sso_housekeeping", schedule=crontab(hour="4", minute="30"), order=62)
def sso_housekeeping(*, now):
    """Forget old SSO sign-in requests and attempts."""
    result = housekeeping(now=now)
    return f"{result['requests']} sign-in request(s), {result['attempts']} attempt(s) forgotten"
