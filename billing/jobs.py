from celery.schedules import crontab

from billing.cards import card_expiry_reminders_send
from billing.collection import dunning_advance
from billing.confirmation import UPGRADE_CONFIRMATION_WINDOW, upgrades_abandoned_void
from billing.credit_notes import refunds_retry_pending
from billing.documents import invoice_documents_render_pending
from billing.dunning import dunning_open_overdue
from billing.invoicing import billing_run_issue, overage_invoices_issue
from billing.ledger import ledger_record
from billing.payments import invoices_charge_due
from billing.reconciliation import reconcile
from core.jobs import scheduled_job


# Order within a tick: issue the period invoices, render their PDFs (the "invoice issued"
# email goes with the PDF), then charge them (the receipt follows).
@scheduled_job(name="billing_run", schedule=crontab(minute="*/15"), order=10)
def billing_run(*, now):
    """Issue the period invoices of subscriptions whose period ends."""
    return f"{billing_run_issue(now=now)} invoice(s) issued"


# Annual plans: an overage-only invoice at the close of each usage month over the limit,
# before the PDFs and charges, so it is rendered and charged in the same tick.
@scheduled_job(name="overage_invoices", schedule=crontab(minute="*/15"), order=15)
def overage_invoices(*, now):
    """Annual plans: an overage-only invoice for each closed usage month over the limit."""
    return f"{overage_invoices_issue(now=now)} overage invoice(s) issued"


@scheduled_job(name="render_invoice_pdfs", schedule=crontab(minute="*/5"), order=20)
def render_invoice_pdfs(*, now):
    """Render the original PDF of issued invoices that have none yet, and email it."""
    return f"{invoice_documents_render_pending(now=now)} PDF(s) rendered"


@scheduled_job(name="charge_open_invoices", schedule=crontab(minute="*/15"), order=30)
def charge_open_invoices(*, now):
    """Charge the card of open invoices that are due; send again refunds not yet confirmed."""
    charged = invoices_charge_due(now=now)
    refunded = refunds_retry_pending(now=now)
    return f"{charged} invoice(s) charged, {refunded} pending refund(s) made"


@scheduled_job(name="abandoned_upgrades", schedule=crontab(minute="*/15"), order=32)
def abandoned_upgrades(*, now):
    """Void upgrades whose 3-D Secure confirmation was not given within the window."""
    voided = upgrades_abandoned_void(now=now)
    hours = int(UPGRADE_CONFIRMATION_WINDOW.total_seconds() // 3600)
    return f"{voided} upgrade(s) left unconfirmed for {hours} hour(s) voided"


@scheduled_job(name="card_expiry_reminders", schedule=crontab(hour="8", minute="0"), order=50)
def card_expiry_reminders(*, now):
    """Remind Admins and Billing contacts, once, 30 days before the card expires."""
    return f"{card_expiry_reminders_send(now=now)} reminder(s) sent"


# Failed payments: overdue bank-transfer / PO invoices open a case, then
# every open case runs the step due (day 3, 7, 14). After the charges, so day 0 is in place.
@scheduled_job(name="dunning_open_overdue", schedule=crontab(minute="*/15"), order=35)
def open_overdue(*, now):
    """Open a dunning case for bank-transfer and PO invoices past their due date."""
    return f"{dunning_open_overdue(now=now)} overdue invoice case(s) opened"


@scheduled_job(name="dunning_steps", schedule=crontab(minute="*/15"), order=40)
def dunning_steps(*, now):
    """Run the failed-payment step due for each open case (day 3, 7, 14)."""
    return f"{dunning_advance(now=now)} dunning step(s) run"


# Money invariants (billing.ledger): after the night's billing and usage work; findings go to
# Django admin (Ledger violations) and the ops dashboard.
@scheduled_job(name="ledger_check", schedule=crontab(hour="5", minute="15"), order=95)
def ledger_check_job(*, now):
    """Check the money invariants; findings go to admin and the ops dashboard."""
    result = ledger_record(now=now)
    return (
        f"{result['found']} ledger violation(s) open, {result['new']} new, "
        f"{result['closed']} closed"
    )


# Our card payments against Stripe's PaymentIntents of the last RECONCILIATION_DAYS days;
# the differences go to Django admin > Reconciliation differences. Last: after the charges.
@scheduled_job(name="reconcile_stripe", schedule=crontab(hour="4", minute="30"), order=90)
def reconcile_stripe(*, now):
    """Compare our card payments of the last days with Stripe's PaymentIntents."""
    return str(reconcile(now=now))
