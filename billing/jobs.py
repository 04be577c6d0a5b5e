from celery.schedules import crontab

from billing.services import (
    billing_run_issue,
    card_expiry_reminders_send,
    invoice_documents_render_pending,
    invoices_charge_due,
)
from billing_portal.jobs import scheduled_job


# Order within a tick: issue the period invoices, render their PDFs (the "invoice issued"
# email goes with the PDF), then charge them (the receipt follows).
@scheduled_job(name="billing_run", schedule=crontab(minute="*/15"), order=10)
def billing_run(*, now):
    return f"{billing_run_issue(now=now)} invoice(s) issued"


@scheduled_job(name="render_invoice_pdfs", schedule=crontab(minute="*/5"), order=20)
def render_invoice_pdfs(*, now):
    return f"{invoice_documents_render_pending(now=now)} PDF(s) rendered"


@scheduled_job(name="charge_open_invoices", schedule=crontab(minute="*/15"), order=30)
def charge_open_invoices(*, now):
    return f"{invoices_charge_due(now=now)} invoice(s) charged"


@scheduled_job(name="card_expiry_reminders", schedule=crontab(hour="8", minute="0"), order=50)
def card_expiry_reminders(*, now):
    return f"{card_expiry_reminders_send(now=now)} reminder(s) sent"
