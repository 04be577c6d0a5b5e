from celery.schedules import crontab

from accounts.delivery import email_deliver_pending
from accounts.services import invitation_expire_due
from accounts.signin_notices import known_browsers_purge
from core.jobs import scheduled_job


@scheduled_job(name="expire_invitations", schedule=crontab(minute="*/10"))
def expire_invitations(*, now):
    """Invitations past their validity (INVITATION_VALID_DAYS) become expired."""
    return f"{invitation_expire_due(now=now)} invitation(s) expired"


@scheduled_job(name="deliver_pending_emails", schedule=crontab(minute="*"), order=1000)
def deliver_pending_emails(*, now):
    """Send the emails whose background delivery failed or never started."""
    return f"{email_deliver_pending(now=now)} email(s) delivered"


@scheduled_job(name="purge_known_browsers", schedule=crontab(minute=17, hour=3))
def purge_known_browsers(*, now):
    """Forget the browsers of sign-in notices unseen for two years."""
    return f"{known_browsers_purge(now=now)} known browser(s) forgotten"
