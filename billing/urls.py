from django.urls import include, path

from billing import balance_views, recipient_views, usage_history_views, views

app_name = "billing"

organisation_urlpatterns = [
    path("settings/billing/", views.billing_settings, name="settings"),
    path("settings/billing/invoices/", views.invoices, name="invoices"),
    # Invoice History > Export CSV: the filtered list (the page's filters in the query string).
    path("settings/billing/invoices/export/", views.invoices_export, name="invoices_export"),
    path(
        "settings/billing/invoices/<str:invoice_number>/pdf/",
        views.invoice_pdf,
        name="invoice_pdf",
    ),
    path(
        "settings/billing/invoices/<str:invoice_number>/revised/<int:document_id>/pdf/",
        views.invoice_revised_pdf,
        name="invoice_revised_pdf",
    ),
    # The customer balance (credit notes to the balance, ops adjustments) and its history.
    path("settings/billing/balance/", balance_views.balance, name="balance"),
    path(
        "settings/billing/credit-notes/<str:credit_note_number>/pdf/",
        views.credit_note_pdf,
        name="credit_note_pdf",
    ),
    # Confirm payment: the bank's 3-D Secure challenge for one invoice (GET shows, POST acts).
    path(
        "settings/billing/invoices/<str:invoice_number>/confirm-payment/",
        views.confirm_payment,
        name="confirm_payment",
    ),
    path("settings/billing/payment-method/", views.payment_method, name="payment_method"),
    # Retry Payment (article section 6): charge every open invoice now (POST).
    path(
        "settings/billing/payment-method/retry/",
        views.retry_payment_view,
        name="retry_payment",
    ),
    path(
        "settings/billing/billing-information/",
        views.billing_information,
        name="billing_information",
    ),
    # Billing recipients: extra addresses for the billing emails (confirmed by an emailed link).
    path(
        "settings/billing/recipients/",
        recipient_views.billing_recipients,
        name="recipients",
    ),
    path(
        "settings/billing/recipients/<uuid:recipient_id>/resend/",
        recipient_views.billing_recipient_resend_view,
        name="recipient_resend",
    ),
    path(
        "settings/billing/recipients/<uuid:recipient_id>/remove/",
        recipient_views.billing_recipient_remove_view,
        name="recipient_remove",
    ),
    # Usage history: the last twelve usage months, one month's daily chart, the months as CSV.
    path(
        "settings/subscription/usage/",
        usage_history_views.usage_history_page,
        name="usage_history",
    ),
    path(
        "settings/subscription/usage/usage-history.csv",
        usage_history_views.usage_history_export,
        name="usage_history_csv",
    ),
    path(
        "settings/subscription/usage/<str:month>/",
        usage_history_views.usage_history_month_page,
        name="usage_month",
    ),
    path("settings/subscription/choose-plan/", views.choose_plan, name="choose_plan"),
    path("settings/subscription/checkout/", views.checkout, name="checkout"),
    # Upgrade Plan (article section 3): choose a higher plan, see the exact quote, confirm.
    path("settings/subscription/upgrade/", views.upgrade, name="upgrade"),
    path("settings/subscription/upgrade/confirm/", views.upgrade_confirm, name="upgrade_confirm"),
]

urlpatterns = [path("o/<slug:org_slug>/", include(organisation_urlpatterns))]
