import math
from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from accounts.audit import Actor
from accounts.roles import ADMIN_AND_BILLING, ADMIN_ONLY
from accounts.tenancy import tenant_view
from billing import gateway
from billing.cards import card_setup_begin, card_setup_complete
from billing.checkout import subscription_checkout
from billing.collection import retry_after_card_update, retry_payment
from billing.confirmation import (
    Confirmation,
    confirm_payment_begin,
    confirm_payment_finish,
    confirm_payment_state,
    upgrade_confirmation_cancel,
)
from billing.details import billing_profile_update
from billing.documents import invoice_document_original
from billing.dunning import Step, amount_due, timeline
from billing.forms import (
    BillingInformationForm,
    CardForm,
    CheckoutForm,
    InvoiceHistoryFilterForm,
    PlanChoiceForm,
)
from billing.invoice_export import export_filename, invoice_history_csv
from billing.models import Invoice
from billing.payments import (
    NEEDS_AUTHENTICATION_RESULT,
    ChargeOutcome,
    charge_outcome,
    invoice_charge,
)
from billing.selectors import (
    billing_profile_for,
    credit_note_get,
    credit_note_history,
    invoice_get,
    invoice_history,
    invoice_history_years,
    invoice_revised_copy_get,
    payment_method_current,
    plan_offered,
    subscription_for_upgrade,
    upgrade_awaiting_confirmation,
)
from billing.tax import tax_for
from billing.upgrades import UpgradeError, subscription_upgrade, upgrade_plans, upgrade_quote
from core.errors import ServiceError
from core.keyset import cursor_decode, keyset_page
from core.money import format_money
from subscriptions.models import PaymentMethodKind, Subscription
from subscriptions.selectors import subscription_with_plan
from subscriptions.states import FAILING

INVOICES_PER_PAGE = 20
HISTORY_FILTERS = ("year", "status", "type", "number")
STALE_CURSOR = "That page link is no longer valid, so the newest invoices are shown."


def _stripe_context(organisation, *, reach_stripe: bool = True) -> dict:
    """Stripe.js settings and a SetupIntent for the card form.

    When Stripe cannot be reached the page still renders, without the card form and with
    `card_form_error` saying why; `reach_stripe=False` (Stripe just failed to answer this
    request) does not try again, so the page waits for one timeout, not two.
    """
    context = {
        "stripe_js_url": gateway.js_url(),
        "stripe_publishable_key": gateway.publishable_key(),
        "client_secret": "",
        "card_form_error": "" if reach_stripe else gateway.UNAVAILABLE_MESSAGE,
    }
    if reach_stripe:
        try:
            context["client_secret"] = card_setup_begin(organisation=organisation)
        except gateway.PaymentError as exc:
            context["card_form_error"] = exc.message
    return context


def _stripe_unavailable(exc: Exception) -> bool:
    return getattr(exc, "code", None) == gateway.GatewayErrorCode.UNAVAILABLE


def _retry_reason(outcome) -> str:
    """Why Retry Payment did not pay everything, as the customer reads it."""
    if outcome.unanswered:
        return gateway.UNAVAILABLE_MESSAGE
    return _sentence(outcome.result)


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_safe
def billing_settings(request):
    return redirect("billing:invoices", org_slug=request.organisation.slug)


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_safe
def invoices(request):
    """Invoice History: the invoices, newest first, each with its credit notes, filtered by
    year, status, type and number, a page at a time by keyset (core.keyset)."""
    organisation = request.organisation
    form, context = _history_filters(request)
    if form.is_bound and not form.is_valid():
        return render(request, "billing/invoices.html", {**context, "page": None}, status=400)
    filters = form.filters(organisation.tzinfo)
    for notice in form.notices:
        messages.info(request, notice)
    before = after = None
    if request.GET.get("before") or request.GET.get("after"):
        before = cursor_decode(request.GET.get("before", "")) if "before" in request.GET else None
        after = cursor_decode(request.GET.get("after", "")) if "after" in request.GET else None
        if before is None and after is None:
            messages.info(request, STALE_CURSOR)
    if filters.credit_notes:
        queryset = credit_note_history(organisation=organisation, filters=filters)
    else:
        queryset = invoice_history(organisation=organisation, filters=filters)
    page = keyset_page(
        queryset, field="issued_at", size=INVOICES_PER_PAGE, before=before, after=after
    )
    context["credit_notes_only"] = filters.credit_notes
    return render(request, "billing/invoices.html", {**context, "page": page})


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_safe
def invoices_export(request):
    """Invoice History > Export CSV: the list the page's filters give, streamed."""
    organisation = request.organisation
    form, context = _history_filters(request)
    if form.is_bound and not form.is_valid():
        return render(request, "billing/invoices.html", {**context, "page": None}, status=400)
    filters = form.filters(organisation.tzinfo)
    response = StreamingHttpResponse(
        invoice_history_csv(organisation=organisation, filters=filters, zone=organisation.tzinfo),
        content_type="text/csv; charset=utf-8",
    )
    cleaned = form.cleaned_data if form.is_bound else {}
    filename = export_filename(
        organisation=organisation,
        year=cleaned.get("year"),
        status=filters.status,
        kind=cleaned.get("type"),
        number=filters.number,
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    # Let a reverse proxy pass the chunks on as they come rather than buffer the file.
    response["X-Accel-Buffering"] = "no"
    return response


def _history_filters(request) -> tuple[InvoiceHistoryFilterForm, dict]:
    """Invoice History's filter form, bound when any filter is given, and the page's context
    (the filters as a query string for the page and export links)."""
    organisation = request.organisation
    years = invoice_history_years(organisation=organisation, zone=organisation.tzinfo)
    filtered = any(request.GET.get(name) for name in HISTORY_FILTERS)
    form = InvoiceHistoryFilterForm(request.GET if filtered else None, years=years)
    filter_query = (
        urlencode({name: request.GET[name] for name in HISTORY_FILTERS if request.GET.get(name)})
        if filtered
        else ""
    )
    context = {
        "form": form,
        "filtered": filtered,
        "filter_query": filter_query,
        "has_invoices": bool(years),
        "tab": "invoices",
    }
    return form, context


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_safe
def invoice_pdf(request, invoice_number):
    invoice = invoice_get(organisation=request.organisation, number=invoice_number)
    document = invoice_document_original(invoice=invoice, now=timezone.now())
    response = HttpResponse(bytes(document.pdf), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_safe
def invoice_revised_pdf(request, invoice_number, document_id):
    """A revised copy ops issued; the original stays downloadable beside it."""
    invoice = invoice_get(organisation=request.organisation, number=invoice_number)
    document = invoice_revised_copy_get(invoice=invoice, document_id=document_id)
    response = HttpResponse(bytes(document.pdf), content_type="application/pdf")
    day = timezone.localtime(document.created_at).date().isoformat()
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}-revised-{day}.pdf"'
    return response


@tenant_view(roles=ADMIN_AND_BILLING, section="billing")
@require_safe
def credit_note_pdf(request, credit_note_number):
    """A credit note's PDF, as rendered at issue."""
    credit_note = credit_note_get(organisation=request.organisation, number=credit_note_number)
    response = HttpResponse(bytes(credit_note.pdf), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{credit_note.number}.pdf"'
    return response


# What each step of the schedule does, said before it happens (billing.dunning).
PLANNED = {
    Step.DAY_0: "The payment fails and we email you.",
    Step.DAY_3: "Second charge attempt, with a reminder email.",
    Step.DAY_7: "Final charge attempt. If it fails, the grace period starts.",
    Step.DAY_14: "Account suspended and every ProcessFlow paused, unless paid by then.",
}
PLANNED_INVOICE = {
    **PLANNED,
    Step.DAY_3: "Reminder email.",
    Step.DAY_7: "Last reminder. If still unpaid, the grace period starts.",
}


def _sentence(text: str) -> str:
    text = text.strip() or "The payment did not go through."
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _countdown(at, now) -> str:
    """Time left until `at`, said as a countdown: "in 5 days", "in 3 hours", "today"."""
    seconds = (at - now).total_seconds()
    if seconds <= 0:
        return "today"
    if seconds >= 86400:
        days = round(seconds / 86400)
        return f"in {days} day{'s' if days != 1 else ''}"
    hours = math.ceil(seconds / 3600)
    return f"in {hours} hour{'s' if hours != 1 else ''}"


def _step_outcome(step: str, record) -> tuple[str, str]:
    """(state, what happened) of a step that ran, from its record."""
    if record.result.startswith("skipped"):
        return "skipped", "Skipped: the schedule ran late."
    if record.succeeded:
        return "paid", "Paid."
    if record.result == "running":
        return "running", "In progress."
    if record.result == NEEDS_AUTHENTICATION_RESULT:
        return "failed", "Needs authentication: your bank asked you to confirm the payment."
    if step == Step.DAY_14:
        return "failed", "Account suspended; active ProcessFlows paused."
    happened = {
        Step.DAY_0: "",
        Step.DAY_3: " Reminder email sent.",
        Step.DAY_7: " Grace period started.",
    }[step]
    if record.attempts:
        tries = "Charge" if record.attempts == 1 else f"{record.attempts} charges"
        return "failed", f"{tries} failed: {_sentence(record.result)}{happened}"
    return "failed", (_sentence(record.result) if step == Step.DAY_0 else happened.strip())


def _timeline_display(dunning: dict, subscription, now) -> dict:
    by_card = subscription.payment_method_kind == PaymentMethodKind.CARD
    planned = PLANNED if by_card else PLANNED_INVOICE
    rows = []
    for row in dunning["rows"]:
        record = row["record"]
        state, text = (
            _step_outcome(row["step"], record) if record else ("scheduled", planned[row["step"]])
        )
        rows.append({**row, "state": state, "text": text, "at": record.ran_at if record else None})
    upcoming = dunning["next"]
    suspended = next((r["record"] for r in rows if r["step"] == Step.DAY_14 and r["record"]), None)
    return {
        **dunning,
        "rows": rows,
        "next_text": planned[upcoming["step"]] if upcoming else "",
        "next_in": _countdown(upcoming["due_at"], now) if upcoming else "",
        "suspended_since": suspended.ran_at if suspended else None,
        "suspension_in": _countdown(dunning["suspension_at"], now),
        "currency": subscription.currency,
        "by_card": by_card,
    }


@tenant_view(roles=ADMIN_AND_BILLING, section="billing", allow_when_ended=True)
def payment_method(request):
    """Payment Method: the card on file, Update Card and, while a payment is failing, the
    dunning timeline with Retry Payment (billing.dunning, billing.collection)."""
    organisation = request.organisation
    form = CardForm(request.POST or None)
    error = None
    reach_stripe = True
    if request.method == "POST" and form.is_valid():
        now = timezone.now()
        try:
            card = card_setup_complete(
                organisation=organisation,
                actor=Actor.from_request(request),
                setup_intent_id=form.cleaned_data["setup_intent_id"],
                now=now,
            )
        except (ServiceError, gateway.PaymentError) as exc:
            error = exc.message
            reach_stripe = not _stripe_unavailable(exc)
        else:
            confirm = _retry_with_new_card(request, card, now=now)
            return confirm or redirect("billing:payment_method", org_slug=organisation.slug)
    elif request.method == "POST":
        error = form.errors["setup_intent_id"][0]
    card = payment_method_current(organisation=organisation)
    now = timezone.now()
    subscription = subscription_with_plan(organisation=organisation)
    payment_failing = subscription is not None and subscription.status in FAILING
    dunning = timeline(subscription=subscription) if payment_failing else None
    context = {
        "card": card,
        "card_expiring": card is not None and card.expires_at <= now + timedelta(days=30),
        "card_expired": card is not None and card.expires_at <= now,
        "card_error": error,
        "tab": "payment_method",
        "subscription": subscription,
        "payment_failing": payment_failing,
        "dunning": _timeline_display(dunning, subscription, now) if dunning else None,
        **_stripe_context(organisation, reach_stripe=reach_stripe),
    }
    return render(request, "billing/payment_method.html", context, status=400 if error else 200)


def _retry_with_new_card(request, card, *, now) -> HttpResponse | None:
    """Update Card while past due retries the open invoices with the new card at once; the
    message says what came of it."""
    organisation = request.organisation
    subscription = subscription_with_plan(organisation=organisation)
    before = amount_due(subscription) if subscription else 0
    outcome = retry_after_card_update(organisation=organisation, now=now)
    if outcome is None:
        messages.success(request, f"{card} saved. It will be charged from the next billing date.")
    elif outcome.needs_authentication is not None:
        messages.info(request, f"{card} saved. Your bank needs you to confirm the payment.")
        return _confirm_payment_redirect(outcome.needs_authentication)
    elif outcome.succeeded:
        paid = format_money(before - amount_due(subscription), subscription.currency)
        messages.success(
            request,
            f"{card} saved and the open invoices were paid with it: {paid} paid. "
            "Your service is running normally.",
        )
    else:
        messages.error(
            request,
            f"{card} saved, but the open invoices could not be paid with it: "
            f"{_retry_reason(outcome)}",
        )
    return None


@tenant_view(roles=ADMIN_AND_BILLING, section="billing", allow_when_ended=False)
@require_POST
def retry_payment_view(request):
    """Retry Payment: charge every open invoice now, whatever the day.

    Two clicks at once charge once: the second finds the first one's attempt pending.
    """
    organisation = request.organisation
    subscription = subscription_with_plan(organisation=organisation)
    before = amount_due(subscription) if subscription else 0
    try:
        outcome = retry_payment(
            organisation=organisation, actor=Actor.from_request(request), now=timezone.now()
        )
    except ServiceError as exc:
        messages.info(request, exc.message)
    else:
        if outcome.needs_authentication is not None:
            return _confirm_payment_redirect(outcome.needs_authentication)
        if outcome.succeeded:
            paid = format_money(before - amount_due(subscription), subscription.currency)
            messages.success(
                request, f"Payment received: {paid} paid. Your service is running normally."
            )
        elif outcome.attempts == 0:
            messages.info(request, "Nothing is due: every invoice is paid.")
        else:
            partly = (
                f"{outcome.paid} of {outcome.attempts} open invoices paid. " if outcome.paid else ""
            )
            messages.error(request, partly + _retry_reason(outcome))
    return redirect("billing:payment_method", org_slug=organisation.slug)


@tenant_view(roles=ADMIN_AND_BILLING, section="billing", allow_when_ended=True)
def billing_information(request):
    organisation = request.organisation
    subscription = subscription_with_plan(organisation=organisation)
    profile = billing_profile_for(organisation=organisation)
    form = BillingInformationForm(
        request.POST or None, instance=profile, plan=subscription.plan if subscription else None
    )
    if request.method == "POST" and form.is_valid():
        billing_profile_update(
            organisation=organisation,
            actor=Actor.from_request(request),
            now=timezone.now(),
            **{name: form.cleaned_data[name] for name in form.Meta.fields},
        )
        messages.success(request, "Billing information saved. It will appear on future invoices.")
        return redirect("billing:billing_information", org_slug=organisation.slug)
    return render(
        request,
        "billing/billing_information.html",
        {"form": form, "tab": "billing_information"},
        status=400 if form.errors else 200,
    )


def _can_choose_plan(subscription) -> bool:
    return subscription is None or subscription.status in (
        Subscription.Status.INCOMPLETE,
        Subscription.Status.ENDED,
    )


@tenant_view(roles=ADMIN_ONLY, section="subscription", allow_when_ended=True)
@require_safe
def choose_plan(request):
    organisation = request.organisation
    if not _can_choose_plan(subscription_with_plan(organisation=organisation)):
        messages.info(request, "You already have a subscription.")
        return redirect("subscriptions:settings", org_slug=organisation.slug)
    form = PlanChoiceForm(
        request.GET or None, initial={"currency": organisation.currency, "billing_cycle": "monthly"}
    )
    if request.GET and form.is_valid():
        checkout_url = reverse("billing:checkout", args=[organisation.slug])
        return redirect(f"{checkout_url}?{request.GET.urlencode()}")
    return render(
        request,
        "billing/choose_plan.html",
        {
            "form": form,
            "plans": form.plans,
            "currency": request.GET.get("currency") or organisation.currency,
        },
    )


@tenant_view(roles=ADMIN_ONLY, section="subscription", allow_when_ended=True)
def checkout(request):
    organisation = request.organisation
    subscription = subscription_with_plan(organisation=organisation)
    if not _can_choose_plan(subscription):
        messages.info(request, "You already have a subscription.")
        return redirect("subscriptions:settings", org_slug=organisation.slug)
    form = CheckoutForm(request.POST if request.method == "POST" else request.GET)
    if not form.is_valid():
        return render(
            request,
            "billing/choose_plan.html",
            {"form": form, "plans": form.plans, "currency": organisation.currency},
            status=400,
        )
    plan = form.cleaned_data["plan_object"]
    cycle = form.cleaned_data["billing_cycle"]
    currency = form.cleaned_data["currency"]
    error = None
    reach_stripe = True
    if request.method == "POST":
        try:
            checkout = subscription_checkout(
                organisation=organisation,
                actor=Actor.from_request(request),
                plan=plan,
                billing_cycle=cycle,
                currency=currency,
                now=timezone.now(),
                setup_intent_id=form.cleaned_data["setup_intent_id"],
            )
        except (ServiceError, gateway.PaymentError) as exc:
            error = exc.message
            reach_stripe = not _stripe_unavailable(exc)
        else:
            if checkout.outcome == ChargeOutcome.PAID:
                messages.success(
                    request,
                    f"Welcome to the {plan.name} plan. Invoice {checkout.invoice.number} is paid; "
                    "you find it in Settings > Billing > Invoice History.",
                )
                return redirect("subscriptions:settings", org_slug=organisation.slug)
            if checkout.outcome == ChargeOutcome.NEEDS_AUTHENTICATION:
                return _confirm_payment_redirect(checkout.invoice)
            if checkout.outcome == ChargeOutcome.DECLINED:
                error = f"Your card was not charged: {checkout.payment.failure_message}"
            else:
                error = "We have not heard back from the card processor yet. Refresh in a minute."
                reach_stripe = False
    return _checkout_page(
        request, form, plan=plan, cycle=cycle, currency=currency, error=error, reach=reach_stripe
    )


def _checkout_page(request, form, *, plan, cycle, currency, error, reach) -> HttpResponse:
    """The checkout page: the price with tax for the billing details entered, the card on
    file or the card form; 402 with the reason when the checkout did not go through."""
    organisation = request.organisation
    profile = billing_profile_for(organisation=organisation)
    price = plan.price_for(currency).amount_for(cycle)
    tax = tax_for(details=profile.snapshot())
    context = {
        "form": form,
        "plan": plan,
        "cycle": cycle,
        "currency": currency,
        "price": price,
        "tax": tax,
        "tax_amount": tax.amount(price),
        "total": price + tax.amount(price),
        "card": payment_method_current(organisation=organisation),
        "card_error": error,
        "profile": profile,
        **_stripe_context(organisation, reach_stripe=reach),
    }
    return render(request, "billing/checkout.html", context, status=402 if error else 200)


def _subscription_for_upgrade(request):
    subscription = subscription_for_upgrade(organisation=request.organisation)
    if subscription is None:
        messages.info(request, "Choose a plan first.")
    return subscription


@tenant_view(roles=ADMIN_ONLY, section="subscription")
@require_safe
def upgrade(request):
    """Upgrade Plan: the higher plans, each with what upgrading now would charge."""
    subscription = _subscription_for_upgrade(request)
    if subscription is None:
        return redirect("billing:choose_plan", org_slug=request.organisation.slug)
    now = timezone.now()
    options, error = [], None
    for plan in upgrade_plans(subscription=subscription):
        try:
            options.append(upgrade_quote(subscription=subscription, plan=plan, now=now))
        except ServiceError as exc:
            error = exc.message
            break
    return render(
        request,
        "billing/upgrade.html",
        {"subscription": subscription, "options": options, "error": error},
    )


@tenant_view(roles=ADMIN_ONLY, section="subscription")
def upgrade_confirm(request):
    """The quote for one plan, the card charged, "takes effect immediately"; POST confirms."""
    organisation = request.organisation
    subscription = _subscription_for_upgrade(request)
    if subscription is None:
        return redirect("billing:choose_plan", org_slug=organisation.slug)
    waiting = upgrade_awaiting_confirmation(subscription=subscription)
    if waiting is not None:
        # One upgrade at a time: the one waiting for the bank is confirmed or cancelled first.
        messages.info(
            request,
            f"Your upgrade to {waiting.plan_name} is waiting for your bank's confirmation.",
        )
        return _confirm_payment_redirect(waiting)
    data = request.POST if request.method == "POST" else request.GET
    plan = plan_offered(code=data.get("plan", ""))
    if plan is None:
        messages.error(request, "That plan does not exist or is no longer offered.")
        return redirect("billing:upgrade", org_slug=organisation.slug)
    now = timezone.now()
    notice, status = None, 200
    if request.method == "POST":
        answer = _upgrade_and_charge(request, subscription=subscription, plan=plan, now=now)
        if isinstance(answer, HttpResponse):
            return answer
        notice, status = answer
        subscription.refresh_from_db()
    try:
        quote = upgrade_quote(subscription=subscription, plan=plan, now=now)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("subscriptions:settings", org_slug=organisation.slug)
    return render(
        request,
        "billing/upgrade_confirm.html",
        {
            "subscription": subscription,
            "quote": quote,
            "card": payment_method_current(organisation=organisation),
            "notice": notice,
        },
        status=status,
    )


def _upgrade_and_charge(request, *, subscription, plan, now) -> HttpResponse | tuple[str, int]:
    """Confirm Upgrade: upgrade and charge the card at once. Paid: back to the subscription
    page; otherwise what to tell the Admin on the quote page, with the HTTP status."""
    organisation = request.organisation
    try:
        quoted_total = int(request.POST.get("quoted_total", ""))
    except ValueError:
        quoted_total = -1
    try:
        invoice = subscription_upgrade(
            organisation=organisation,
            actor=Actor.from_request(request),
            plan=plan,
            quoted_total=quoted_total,
            now=now,
        )
        if invoice is None:
            return _upgrade_carried(request, plan=plan)
        # Paid by the customer balance: nothing to charge, the new plan applies already.
        paid = invoice.status == Invoice.Status.PAID
        payment = None if paid else invoice_charge(invoice=invoice, now=now, on_session=True)
    except ServiceError as exc:
        return exc.message, (409 if exc.code == UpgradeError.QUOTE_CHANGED else 400)
    outcome = ChargeOutcome.PAID if paid else charge_outcome(payment)
    if outcome == ChargeOutcome.NEEDS_AUTHENTICATION:
        return _confirm_payment_redirect(invoice)
    if outcome == ChargeOutcome.PAID:
        messages.success(
            request,
            f"You are now on the {plan.name} plan. Invoice {invoice.number} "
            f"({format_money(invoice.total, invoice.currency)}) is paid"
            + (
                f", {format_money(invoice.credit_applied, invoice.currency)} of it from your "
                "account balance."
                if invoice.credit_applied
                else "."
            ),
        )
        return redirect("subscriptions:settings", org_slug=organisation.slug)
    if outcome == ChargeOutcome.DECLINED:
        return (
            f"Your card was not charged and you stay on {subscription.plan.name}: "
            f"{payment.failure_message}",
            402,
        )
    return (
        "We have not heard back from the card processor yet. The upgrade applies "
        "as soon as the payment is confirmed.",
        202,
    )


def _confirm_payment_redirect(invoice) -> HttpResponse:
    """To Confirm payment, where the bank's challenge starts at once."""
    url = reverse("billing:confirm_payment", args=[invoice.organisation.slug, invoice.number])
    return redirect(f"{url}?start=1")


@tenant_view(roles=ADMIN_AND_BILLING, section="billing", allow_when_ended=True)
def confirm_payment(request, invoice_number):
    """Confirm payment: the bank's 3-D Secure challenge for one invoice (billing.confirmation).

    GET shows where the invoice stands (an invoice of another organisation is a 404, one
    already paid says so and charges nothing). POST `begin` confirms the waiting PaymentIntent
    again on session, `finish` records what Stripe says once the challenge is over, `cancel`
    gives up an upgrade waiting for the bank.
    """
    organisation = request.organisation
    invoice = invoice_get(organisation=organisation, number=invoice_number)
    now = timezone.now()
    status = 200
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "cancel":
            if upgrade_confirmation_cancel(invoice=invoice, now=now):
                messages.info(
                    request,
                    f"The upgrade to {invoice.plan_name} was cancelled; nothing was charged.",
                )
            return redirect("subscriptions:settings", org_slug=organisation.slug)
        try:
            if action == "finish":
                state = confirm_payment_finish(invoice=invoice, now=now)
            else:
                state = confirm_payment_begin(invoice=invoice, now=now)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return redirect("subscriptions:settings", org_slug=organisation.slug)
        if state.state == Confirmation.PAID:
            return _confirmed(request, invoice)
        if state.state == Confirmation.WAITING and action != "finish":
            return _confirm_payment_redirect(invoice)
        status = 402 if state.state in (Confirmation.RETRY, Confirmation.DECLINED) else 200
    else:
        state = confirm_payment_state(invoice=invoice)
    invoice.refresh_from_db()
    return render(
        request,
        "billing/confirm_payment.html",
        {
            "invoice": invoice,
            "state": state,
            "tab": "invoices",
            "autostart": request.GET.get("start") == "1",
            "stripe_js_url": gateway.js_url(),
            "stripe_publishable_key": gateway.publishable_key(),
        },
        status=status,
    )


def _confirmed(request, invoice) -> HttpResponse:
    """The payment went through: what it was for follows, as the page that charged says it."""
    organisation = request.organisation
    invoice.refresh_from_db()
    total = format_money(invoice.total, invoice.currency)
    if invoice.kind == Invoice.Kind.UPGRADE:
        messages.success(
            request,
            f"You are now on the {invoice.plan_name} plan. Invoice {invoice.number} "
            f"({total}) is paid.",
        )
        return redirect("subscriptions:settings", org_slug=organisation.slug)
    if invoice.starts_term:
        messages.success(
            request,
            f"Welcome to the {invoice.plan_name} plan. Invoice {invoice.number} is paid; "
            "you find it in Settings > Billing > Invoice History.",
        )
        return redirect("subscriptions:settings", org_slug=organisation.slug)
    subscription = subscription_with_plan(organisation=organisation)
    if subscription is not None and subscription.status == Subscription.Status.ENDED:
        # What an earlier term owed, paid at checkout: the new term is chosen next.
        messages.success(
            request,
            f"Payment received: {total} for invoice {invoice.number}. Now choose your plan.",
        )
        return redirect("billing:choose_plan", org_slug=organisation.slug)
    still_due = amount_due(subscription) if subscription else 0
    if still_due:
        messages.success(
            request,
            f"Payment received: {total} for invoice {invoice.number}. "
            f"{format_money(still_due, invoice.currency)} is still due: use Retry Payment.",
        )
    else:
        messages.success(
            request,
            f"Payment received: {total} for invoice {invoice.number}. "
            "Your service is running normally.",
        )
    return redirect("billing:payment_method", org_slug=organisation.slug)


def _upgrade_carried(request, *, plan) -> HttpResponse:
    """An upgrade under the minimum card charge: applied, nothing charged, its amount carried
    to the next invoice
    (docs/architecture.md#decision-amounts-below-the-minimum-charge-are-carried)."""
    subscription = Subscription.objects.get(organisation=request.organisation)
    renews = timezone.localtime(subscription.current_period_end, request.organisation.tzinfo)
    messages.success(
        request,
        f"You are now on the {plan.name} plan. The prorated difference is below the minimum "
        f"card charge: it is added to your next invoice on {renews:%-d %b %Y}.",
    )
    return redirect("subscriptions:settings", org_slug=request.organisation.slug)
