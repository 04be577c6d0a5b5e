"""What the simulated people and ops staff do (devkit.simulation runs them).

Each `_move_<name>` is one thing a person does in the portal or ops do in Django admin, through
the same services the views and admin actions call, with an explicit `now`. A move that the
product refuses raises ServiceError, which the simulation counts as refused.
"""

from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import time_machine
from django.db.models import F

from accounts.audit import Actor
from accounts.models import Organisation, User
from accounts.services import organisation_create
from billing.cards import card_setup_complete, stripe_customer_ensure
from billing.checkout import subscription_checkout
from billing.collection import retry_after_card_update, retry_payment
from billing.confirmation import Confirmation, confirm_payment_begin, confirm_payment_finish
from billing.credit_notes import OPS_REASONS, credit_note_issue
from billing.details import billing_profile_update
from billing.dunning import dunning_extend_grace, invoice_mark_uncollectible
from billing.forms import BillingInformationForm
from billing.models import CreditNote, DunningCase, Invoice, Payment
from billing.payments import MANUAL_KEY, ChargeOutcome, invoice_charge
from billing.selectors import billing_profile_for
from billing.upgrades import QuoteChanged, subscription_upgrade, upgrade_plans, upgrade_quote
from billing.webhooks import stripe_event_receive
from core.errors import ServiceError
from devkit.stripe_standin import (
    AUTH_3DS2,
    AUTH_ALWAYS,
    CHARGE_FAILS,
    MASTERCARD,
    NEEDS_3DS,
    VISA,
    StripeJsError,
    authenticate_payment,
    confirmed_setup_intent,
    dispute_close,
    dispute_open,
    dispute_update,
    refund_in_dashboard,
    standin_client,
)
from subscriptions.cancellation import (
    subscription_cancel,
    subscription_cancel_undo,
)
from subscriptions.models import (
    BillingCycle,
    CancellationReason,
    PaymentMethodKind,
    Plan,
    ProcessFlow,
    Subscription,
)
from subscriptions.plan_changes import downgrade_cancel, downgrade_schedule
from subscriptions.services import (
    environment_create,
    process_flow_create,
    process_flow_resume,
    subscription_schedule_annual_billing,
    subscription_set_payment_method_kind,
)
from usage.services import api_key_create

# Lowered monthly limits (devkit/simulation.py says why); overage is per started 1,000 above them.
SIM_LIMITS = {"standard": 100, "professional": 300, "enterprise": 800}
# Billing Information as people type it: (country, VAT number). DE with a VAT number is an EU
# reverse charge (the seller is in Ireland); the others are taxed at their country's rate or not.
BILLING_DETAILS = [
    ("US", ""),
    ("GB", ""),
    ("DE", "DE136695976"),
    ("IE", ""),
    ("IN", ""),
    ("CA", ""),
]
FIRST_CARD_FAILS = 0.1
# Cards whose bank asks for 3-D Secure: on setup only (NEEDS_3DS), or on every payment.
CARDS_THAT_ASK = (NEEDS_3DS, AUTH_ALWAYS, AUTH_3DS2)
FIRST_CARD_ASKS = 0.15
# When the bank's challenge appears, the customer completes it, fails it, or leaves the page.
CHALLENGE_OUTCOMES = {"confirmed": 0.7, "failed": 0.15, "abandoned": 0.15}


@dataclass
class Customer:
    """One organisation and what its people know or intend (never the database's truth)."""

    index: int
    signup_day: int
    zone: str
    currency: str
    plan: str
    cycle: str
    details: tuple[str, str]
    prefers_transfer: bool
    slow_payer: bool
    organisation_id: int | None = None
    admin: User | None = None
    card_bad: bool = False
    api_key: str = ""
    flows_set_up: bool = False
    pending: list[datetime] = field(default_factory=list)
    generated_until: datetime | None = None
    factor: float = 0.0
    factor_until: datetime | None = None
    batches: int = 0
    grace_extended_case: int | None = None
    open_dispute: str = ""  # the Stripe id of a dispute the bank has not decided yet


@contextmanager
def at_instant(moment: datetime):
    """The clock stands at `moment` for whatever reads it (timezone.now, model defaults)."""
    with time_machine.travel(moment, tick=False):
        yield


class CustomerMoves:
    """The moves, mixed into devkit.simulation.Simulation, which provides `rng`, `seed`,
    `stats`, `ops` and `_refresh_one`."""

    def _organisation(self, customer: Customer) -> Organisation:
        return Organisation.objects.get(pk=customer.organisation_id)

    def _subscription(self, customer: Customer) -> Subscription:
        return (
            Subscription.objects.select_related("organisation", "plan")
            .prefetch_related("plan__prices")
            .get(organisation_id=customer.organisation_id)
        )

    def _actor(self, customer: Customer) -> Actor:
        return Actor(user=customer.admin)

    def _move_sign_up(self, customer: Customer, at: datetime) -> None:
        """Sign-up (what the allauth adapter does), Billing Information, then the checkout."""
        user = User.objects.create_user(
            email=f"admin{customer.index}@sim{self.seed}.test", full_name=f"Admin {customer.index}"
        )
        organisation = organisation_create(
            name=f"Simulated {customer.index}",
            owner=user,
            now=at,
            time_zone=customer.zone,
            currency=customer.currency,
        )
        customer.organisation_id = organisation.pk
        customer.admin = user
        customer.generated_until = at
        self._billing_details(customer, organisation, customer.details, at)
        draw = self.rng.random()
        number = (
            CHARGE_FAILS
            if draw < FIRST_CARD_FAILS
            else self.rng.choice(CARDS_THAT_ASK)
            if draw < FIRST_CARD_FAILS + FIRST_CARD_ASKS
            else VISA
        )
        self._checkout(customer, organisation, number, at)

    def _billing_details(self, customer, organisation, details, at) -> None:
        country, vat_number = details
        form = BillingInformationForm(
            {
                "company_name": organisation.name,
                "address_line1": f"{customer.index} Main Street",
                "city": "Springfield",
                "postal_code": "12345",
                "country": country,
                "vat_number": vat_number,
            },
            instance=billing_profile_for(organisation=organisation),
            plan=None,
        )
        if not form.is_valid():
            raise AssertionError(f"Billing Information refused: {form.errors.as_json()}")
        billing_profile_update(
            organisation=organisation,
            actor=self._actor(customer),
            now=at,
            **{name: form.cleaned_data[name] for name in BillingInformationForm.Meta.fields},
        )

    def _confirmed_card(self, customer: Customer, organisation: Organisation, number: str) -> str:
        """Stripe.js confirms a SetupIntent with the card; its id, as the page posts it."""
        customer_id = stripe_customer_ensure(organisation=organisation)
        setup_intent_id = confirmed_setup_intent(customer_id=customer_id, number=number)
        customer.card_bad = number == CHARGE_FAILS
        return setup_intent_id

    def _new_card(self, customer: Customer, organisation: Organisation, number: str, at) -> None:
        """Update Card: Stripe.js confirms a SetupIntent, the view completes it."""
        card_setup_complete(
            organisation=organisation,
            actor=self._actor(customer),
            setup_intent_id=self._confirmed_card(customer, organisation, number),
            now=at,
        )

    def _checkout(self, customer: Customer, organisation: Organisation, number: str, at) -> None:
        """Choose a plan > checkout (billing.views.checkout): card, first invoice, charge."""
        checkout = subscription_checkout(
            organisation=organisation,
            actor=self._actor(customer),
            plan=Plan.objects.get(code=customer.plan),
            billing_cycle=customer.cycle,
            currency=customer.currency,
            now=at,
            setup_intent_id=self._confirmed_card(customer, organisation, number),
        )
        paid = checkout.outcome == ChargeOutcome.PAID
        if checkout.outcome == ChargeOutcome.NEEDS_AUTHENTICATION:
            paid = self._challenge(checkout.invoice, "checkout", at)
        self._refresh_one(customer)
        if paid:
            self._flows_running(customer, organisation, at)
        else:
            self.stats.moves["first_payment_failed"] += 1

    def _challenge(self, invoice: Invoice, where: str, at: datetime) -> bool:
        """The bank's challenge on Confirm payment, as the page runs it: completed, failed or
        left open (Stripe.js in the browser, then the page reports back). Whether it paid."""
        outcome = self.rng.choices(
            list(CHALLENGE_OUTCOMES), weights=list(CHALLENGE_OUTCOMES.values())
        )[0]
        self.stats.moves[f"3ds {where}: {outcome}"] += 1
        state = confirm_payment_begin(invoice=invoice, now=at)
        if state.state != Confirmation.WAITING:
            return state.state == Confirmation.PAID
        if outcome == "abandoned":
            return False
        # Declined once authenticated (StripeJsError): the page reports back all the same.
        with suppress(StripeJsError):
            authenticate_payment(state.client_secret, success=outcome == "confirmed")
        return confirm_payment_finish(invoice=invoice, now=at).state == Confirmation.PAID

    def _flows_running(self, customer: Customer, organisation: Organisation, at) -> None:
        """A first environment, flows and an API key; after a resubscription, flows resumed."""
        actor = self._actor(customer)
        if not customer.flows_set_up:
            environment = environment_create(
                organisation=organisation, actor=actor, now=at, name="Production"
            )
            for n in range(self.rng.randint(1, 3)):
                process_flow_create(
                    organisation=organisation,
                    actor=actor,
                    now=at,
                    name=f"Orders {n + 1}",
                    environment=environment,
                )
            _, customer.api_key = api_key_create(
                environment=environment, actor=actor, name="runtime", now=at
            )
            customer.flows_set_up = True
            return
        for flow in ProcessFlow.objects.filter(
            organisation=organisation,
            status=ProcessFlow.Status.PAUSED,
            pause_reason=ProcessFlow.PauseReason.CANCELLED,
        ):
            process_flow_resume(organisation=organisation, actor=actor, now=at, flow=flow)

    def _move_checkout_again(self, customer: Customer, at: datetime) -> None:
        self._checkout(customer, self._organisation(customer), VISA, at)

    def _move_resubscribe(self, customer: Customer, at: datetime) -> None:
        customer.plan = self.rng.choice(list(SIM_LIMITS))
        customer.cycle = self.rng.choice([BillingCycle.MONTHLY, BillingCycle.ANNUAL])
        self._checkout(customer, self._organisation(customer), MASTERCARD, at)

    def _move_upgrade(self, customer: Customer, at: datetime) -> None:
        """Upgrade Plan: the quote shown, then confirmed (sometimes hours later, when the
        amount has moved: the page shows the new quote and the Admin confirms that)."""
        subscription = self._subscription(customer)
        plans = upgrade_plans(subscription=subscription)
        if not plans:
            raise ServiceError("no higher plan")
        plan = self.rng.choice(plans)
        quote = upgrade_quote(subscription=subscription, plan=plan, now=at)
        confirm_at = at
        if self.rng.random() < 0.25:
            later = at + timedelta(minutes=self.rng.randrange(30, 240))
            if later < subscription.current_period_end - timedelta(hours=1):
                confirm_at = later
        with at_instant(confirm_at):
            organisation = subscription.organisation
            try:
                invoice = subscription_upgrade(
                    organisation=organisation,
                    actor=self._actor(customer),
                    plan=plan,
                    quoted_total=quote.total,
                    now=confirm_at,
                )
            except QuoteChanged as changed:
                self.stats.moves["upgrade_quote_changed"] += 1
                invoice = subscription_upgrade(
                    organisation=organisation,
                    actor=self._actor(customer),
                    plan=plan,
                    quoted_total=changed.quote.total,
                    now=confirm_at,
                )
            if invoice is None:  # under the minimum charge: applied, carried to the renewal
                self.stats.moves["upgrade_carried"] += 1
                return
            if invoice.status == Invoice.Status.PAID:  # the customer balance paid it
                self.stats.moves["upgrade_paid_by_balance"] += 1
                return
            payment = invoice_charge(invoice=invoice, now=confirm_at, on_session=True)
            if (
                payment is not None
                and payment.status == Payment.Status.REQUIRES_ACTION
                and self._challenge(invoice, "upgrade", confirm_at)
            ):
                return
        if payment is None or payment.status != Payment.Status.SUCCEEDED:
            self.stats.moves["upgrade_declined"] += 1

    def _move_downgrade(self, customer: Customer, at: datetime) -> None:
        subscription = self._subscription(customer)
        lower = [
            plan
            for plan in Plan.objects.filter(is_public=True, rank__lt=subscription.plan.rank)
            .prefetch_related("prices")
            .order_by("rank")
            if plan.price_for(subscription.currency)
        ]
        if not lower:
            raise ServiceError("no lower plan")
        downgrade_schedule(
            subscription=subscription,
            actor=self._actor(customer),
            plan=self.rng.choice(lower),
            keep_flow_ids=None,
            now=at,
        )

    def _move_undo_downgrade(self, customer: Customer, at: datetime) -> None:
        downgrade_cancel(
            subscription=self._subscription(customer), actor=self._actor(customer), now=at
        )

    def _move_cancel(self, customer: Customer, at: datetime) -> None:
        subscription_cancel(
            subscription=self._subscription(customer),
            actor=self._actor(customer),
            reason=self.rng.choice(
                [r for r in CancellationReason.values if r != CancellationReason.OTHER]
            ),
            detail="",
            now=at,
        )

    def _move_undo_cancel(self, customer: Customer, at: datetime) -> None:
        subscription_cancel_undo(
            subscription=self._subscription(customer), actor=self._actor(customer), now=at
        )

    def _update_card(self, customer: Customer, number: str, at: datetime) -> None:
        """Payment Method > Update Card (billing.views.payment_method): while past due the
        open invoices are retried with the new card at once."""
        organisation = self._organisation(customer)
        self._new_card(customer, organisation, number, at)
        outcome = retry_after_card_update(organisation=organisation, now=at)
        if outcome is not None and outcome.needs_authentication is not None:
            self._challenge(outcome.needs_authentication, "card update", at)

    def _move_card_goes_bad(self, customer: Customer, at: datetime) -> None:
        self._update_card(customer, CHARGE_FAILS, at)

    def _move_card_that_asks(self, customer: Customer, at: datetime) -> None:
        """A new card whose bank asks for 3-D Secure (its setup challenge is completed)."""
        self._update_card(customer, self.rng.choice(CARDS_THAT_ASK), at)

    def _move_confirm_payment(self, customer: Customer, at: datetime) -> None:
        """The "Your bank needs you to confirm this payment" email's link, followed."""
        waiting = Invoice.objects.filter(
            organisation_id=customer.organisation_id,
            status=Invoice.Status.OPEN,
            payments__status=Payment.Status.REQUIRES_ACTION,
        ).order_by("issued_at", "pk")
        invoice = waiting.first()
        if invoice is None:
            raise ServiceError("nothing waits for the bank")
        self._challenge(invoice, "off-session", at)

    def _move_replace_card(self, customer: Customer, at: datetime) -> None:
        self._update_card(customer, VISA, at)

    def _move_retry_payment(self, customer: Customer, at: datetime) -> None:
        outcome = retry_payment(
            organisation=self._organisation(customer), actor=self._actor(customer), now=at
        )
        if outcome.needs_authentication is not None:
            self._challenge(outcome.needs_authentication, "retry payment", at)

    def _move_billing_details(self, customer: Customer, at: datetime) -> None:
        details = self.rng.choice(BILLING_DETAILS)
        self._billing_details(customer, self._organisation(customer), details, at)

    def _move_switch_to_annual(self, customer: Customer, at: datetime) -> None:
        subscription_schedule_annual_billing(
            subscription=self._subscription(customer), actor=Actor(user=self.ops), now=at
        )

    def _move_invoice_by_transfer(self, customer: Customer, at: datetime) -> None:
        subscription = self._subscription(customer)
        kind = (
            PaymentMethodKind.PURCHASE_ORDER
            if subscription.plan.allows_purchase_order and self.rng.random() < 0.5
            else PaymentMethodKind.BANK_TRANSFER
        )
        subscription_set_payment_method_kind(
            subscription=subscription, kind=kind, actor=Actor(user=self.ops), now=at
        )

    def _move_invoice_by_card(self, customer: Customer, at: datetime) -> None:
        subscription_set_payment_method_kind(
            subscription=self._subscription(customer),
            kind=PaymentMethodKind.CARD,
            actor=Actor(user=self.ops),
            now=at,
        )

    def _move_extend_grace(self, customer: Customer, at: datetime) -> None:
        case = DunningCase.objects.filter(
            organisation_id=customer.organisation_id, status=DunningCase.Status.OPEN
        ).first()
        if case is None or case.pk == customer.grace_extended_case:
            raise ServiceError("no case to extend")
        customer.grace_extended_case = case.pk
        dunning_extend_grace(
            case=case, days=7, actor=Actor(user=self.ops), now=at, reason="Customer called"
        )

    def _move_credit_note(self, customer: Customer, at: datetime) -> None:
        """Ops correct one of the organisation's recent invoices (a complaint, a mistake): the
        outcome the invoice allows, for the whole of it, its first line or a part."""
        invoice = (
            Invoice.objects.filter(organisation_id=customer.organisation_id)
            .exclude(status=Invoice.Status.VOID)
            .exclude(amount_credited=F("total"))
            .order_by("-issued_at", "-pk")
            .first()
        )
        if invoice is None:
            raise ServiceError("nothing to credit")
        self._credit(invoice, at=at, reason=self.rng.choice(OPS_REASONS))

    def _move_goodwill_credit(self, customer: Customer, at: datetime) -> None:
        """An annual plan cancelled mid-term gets no refund for the unused months; ops may
        still make a goodwill gesture on its last period invoice."""
        invoice = (
            Invoice.objects.filter(
                organisation_id=customer.organisation_id,
                kind=Invoice.Kind.SUBSCRIPTION,
                status=Invoice.Status.PAID,
                billing_cycle=BillingCycle.ANNUAL,
            )
            .order_by("-issued_at", "-pk")
            .first()
        )
        if invoice is None:
            raise ServiceError("no annual invoice")
        self._credit(invoice, at=at, reason=CreditNote.Reason.GOODWILL)

    def _credit(self, invoice: Invoice, *, at: datetime, reason: str) -> None:
        Outcome = CreditNote.Outcome
        if invoice.status == Invoice.Status.OPEN:
            outcome = Outcome.REDUCE_DUE
        elif invoice.payments.filter(
            status=Payment.Status.SUCCEEDED, method_kind=PaymentMethodKind.CARD
        ).exclude(processor_id=""):
            outcome = self.rng.choice([Outcome.REFUND, Outcome.REFUND, Outcome.BALANCE])
        else:
            outcome = self.rng.choice([Outcome.REFUNDED_OUTSIDE, Outcome.BALANCE])
        how = self.rng.random()
        amount = line_ids = None
        if how < 0.3:
            line_ids = [invoice.lines.order_by("position").values_list("pk", flat=True)[0]]
        elif how < 0.7:
            left = invoice.amount_uncredited
            if outcome == Outcome.REDUCE_DUE:
                left = invoice.amount_due
            amount = max(1, int(left * self.rng.uniform(0.05, 0.6)))
        credit_note_issue(
            invoice=invoice,
            actor=Actor(user=self.ops),
            reason=reason,
            outcome=outcome,
            note="Simulated" if reason == CreditNote.Reason.OTHER else "",
            amount=amount,
            line_ids=line_ids,
            reference=f"SIM-{invoice.number}" if outcome == Outcome.REFUNDED_OUTSIDE else "",
            now=at,
        )

    def _last_card_payment(self, customer: Customer) -> Payment:
        """The organisation's latest card payment through Stripe, not disputed."""
        payment = (
            Payment.objects.filter(
                organisation_id=customer.organisation_id,
                status=Payment.Status.SUCCEEDED,
                method_kind=PaymentMethodKind.CARD,
                disputed_at__isnull=True,
            )
            .exclude(processor_id="")
            .exclude(idempotency_key__contains=MANUAL_KEY)
            .select_related("invoice")
            .order_by("-completed_at", "-pk")
            .first()
        )
        if payment is None:
            raise ServiceError("no card payment")
        return payment

    def _move_dashboard_refund(self, customer: Customer, at: datetime) -> None:
        """Ops refund part of a recent card payment in the Stripe dashboard; Stripe's
        `charge.refunded` webhook tells us (it becomes a credit note "refunded in Stripe")."""
        payment = self._last_card_payment(customer)
        refunded = sum(payment.refunds.values_list("amount", flat=True))
        room = min(payment.amount - refunded, payment.invoice.amount_uncredited)
        if room <= 0:
            raise ServiceError("refunded in full already")
        refund_id = refund_in_dashboard(
            payment.processor_id, max(1, int(room * self.rng.uniform(0.1, 0.5)))
        )
        charge = standin_client().v1.payment_intents.retrieve(payment.processor_id)
        charge = charge["latest_charge"]
        if isinstance(charge, str):
            charge = standin_client().v1.charges.retrieve(charge)
        event = {
            "id": f"evt_sim_{refund_id}",
            "type": "charge.refunded",
            "created": int(at.timestamp()),
            "data": {"object": charge.to_dict()},
        }
        stripe_event_receive(event=event, now=at)

    def _move_dispute(self, customer: Customer, at: datetime) -> None:
        """A cardholder disputes a recent card payment with their bank (a chargeback)."""
        if customer.open_dispute:
            raise ServiceError("a dispute is open")
        payment = self._last_card_payment(customer)
        if sum(payment.refunds.values_list("amount", flat=True)) >= payment.amount:
            raise ServiceError("refunded in full: nothing left to dispute")
        reason = self.rng.choice(["fraudulent", "product_not_received", "subscription_canceled"])
        event = dispute_open(payment.processor_id, reason=reason)
        stripe_event_receive(event=event, now=at)
        customer.open_dispute = event["data"]["object"]["id"]

    def _move_dispute_decided(self, customer: Customer, at: datetime) -> None:
        """The bank decides the dispute, after the evidence: won or lost."""
        if not customer.open_dispute:
            raise ServiceError("no open dispute")
        dispute_id, customer.open_dispute = customer.open_dispute, ""
        stripe_event_receive(event=dispute_update(dispute_id), now=at)
        status = self.rng.choice(["won", "lost"])
        stripe_event_receive(event=dispute_close(dispute_id, status=status), now=at)

    def _move_write_off(self, customer: Customer, at: datetime) -> None:
        invoices = Invoice.objects.filter(
            organisation_id=customer.organisation_id, status=Invoice.Status.OPEN
        ).exclude(kind=Invoice.Kind.UPGRADE)
        if not invoices:
            raise ServiceError("nothing open")
        for invoice in invoices.order_by("pk"):
            invoice_mark_uncollectible(
                invoice=invoice, actor=Actor(user=self.ops), now=at, reason="Customer insolvent"
            )
