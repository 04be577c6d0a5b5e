"""Money invariants (billing.ledger): a year's worth of ordinary billing holds every rule, and each
rule, broken on purpose through raw SQL, is reported."""

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from billing.invoicing import billing_run_issue
from billing.ledger import ledger_check, ledger_record
from billing.models import Invoice, LedgerViolation, OverageCharge
from billing.payments import invoices_charge_due
from core.jobs import run_job
from subscriptions.models import Plan, Subscription
from tests.billing.helpers import subscribe
from tests.billing.test_upgrade import upgrade
from tests.subscriptions.factories import ProcessFlowFactory
from usage.models import ApiKey
from usage.services import sync_info_ingest

pytestmark = pytest.mark.django_db

RENEWAL = datetime(2026, 2, 28, 10, 30, tzinfo=UTC)
UPGRADED = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 15, 9, 0, tzinfo=UTC)


def ingest(org, *, count, at, batch):
    flow = (
        ProcessFlowFactory(environment__organisation=org)
        if not hasattr(org, "_flow")
        else org._flow
    )
    org._flow = flow
    key = ApiKey.objects.filter(environment=flow.environment).first() or ApiKey.objects.create(
        organisation=org,
        environment=flow.environment,
        name="Runtime",
        prefix="ak_test",
        key_hash=hashlib.sha256(f"{org.pk}".encode()).hexdigest(),
    )
    records = [
        {
            "flow_id": str(flow.public_id),
            "record_key": f"SO-{batch}-{i}",
            "status": "success",
            "direction": "outbound",
            "synced_at": (at + timedelta(seconds=i)).isoformat(),
        }
        for i in range(count)
    ]
    result = sync_info_ingest(
        key=key, idempotency_key=batch, body=json.dumps({"records": records}).encode(), now=at
    )
    assert result.status_code in (201, 202), result.body


@pytest.fixture
def world(localstripe, org, admin):
    """Acme on Standard (limit lowered to 2,000 for the test) since START: over the limit in its
    first month, renewed with the overage on the renewal invoice and paid, upgraded to
    Professional half-way through the second period and paid, with usage in March too."""
    Plan.objects.filter(code="standard").update(monthly_transactions=2_000)
    subscribe(org, plan="standard")
    ingest(org, count=3_500, at=datetime(2026, 2, 10, 8, 0, tzinfo=UTC), batch="feb")
    assert billing_run_issue(now=RENEWAL) == 1
    invoices_charge_due(now=RENEWAL)
    upgrade(org, at=UPGRADED, code="professional")
    ingest(org, count=40, at=datetime(2026, 3, 12, 8, 0, tzinfo=UTC), batch="mar")
    return org


def rules(found):
    return {violation.rule for violation in found}


def test_ordinary_billing_holds_every_rule(world):
    assert OverageCharge.objects.get().units == 2  # 1,500 above 2,000: two started thousands
    assert Invoice.objects.filter(status="paid").count() == 3
    assert ledger_check(now=NOW) == []
    assert ledger_check(now=NOW, organisation_ids=[world.pk]) == []


def sql(statement, params=()):
    with connection.cursor() as cursor:
        if statement.startswith(("ALTER", "DROP")):
            # Deferred foreign-key checks of the test's transaction must run before DDL.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(statement, params)


def break_quote(by=1):
    """One violation exactly: the upgrade invoice no longer equals its stored quote."""
    sql("UPDATE subscriptions_planchange SET quote_total = quote_total + %s", [by])


def renewal_invoice():
    return Invoice.objects.get(kind="subscription", period_start__gte=RENEWAL - timedelta(hours=1))


def test_a_gap_between_periods(world):
    sql(
        "UPDATE billing_invoice SET period_start = period_start + interval '1 day' WHERE id = %s",
        [renewal_invoice().pk],
    )
    found = ledger_check(now=NOW)
    assert "periods" in rules(found)
    assert any("Gap between" in v.message for v in found)


def test_an_overlap_between_periods(world):
    sql(
        "UPDATE billing_invoice SET period_start = period_start - interval '1 day' WHERE id = %s",
        [renewal_invoice().pk],
    )
    assert any("overlap" in v.message for v in ledger_check(now=NOW))


def test_a_renewal_left_uninvoiced(world):
    # The period ended two hours ago and the billing run never came.
    assert "periods" in rules(ledger_check(now=datetime(2026, 3, 31, 12, 30, tzinfo=UTC)))


def test_lines_that_do_not_add_up(world):
    sql(
        "UPDATE billing_invoiceline SET amount = amount + 1 WHERE invoice_id = %s",
        [renewal_invoice().pk],
    )
    found = [v for v in ledger_check(now=NOW) if v.rule == "invoice_totals"]
    assert any("Lines add up to" in v.message for v in found)
    assert any("not quantity × unit amount" in v.message for v in found)


def test_tax_not_following_the_rule(world):
    sql(
        "UPDATE billing_invoice SET tax_amount = tax_amount + 1, total = total + 1 WHERE id = %s",
        [renewal_invoice().pk],
    )
    assert any("rule gives" in v.message for v in ledger_check(now=NOW))


def test_total_not_subtotal_plus_tax(world):
    # The database refuses this itself; the check stands behind it for what comes around it.
    sql("ALTER TABLE billing_invoice DROP CONSTRAINT invoice_total_is_subtotal_plus_tax")
    sql("UPDATE billing_invoice SET total = total + 100 WHERE id = %s", [renewal_invoice().pk])
    assert any("is not subtotal + tax" in v.message for v in ledger_check(now=NOW))


def test_a_gap_in_invoice_numbers(world):
    last = Invoice.objects.order_by("-number").first()
    sql("UPDATE billing_invoice SET number = 'INV-2026-000009' WHERE id = %s", [last.pk])
    found = [v for v in ledger_check(now=NOW) if v.rule == "numbering"]
    assert any("missing in 2026" in v.message for v in found)
    assert any("sequence is at" in v.message for v in found)


def test_a_duplicate_invoice_number(world):
    sql("ALTER TABLE billing_invoice DROP CONSTRAINT IF EXISTS billing_invoice_number_key")
    sql("DROP INDEX IF EXISTS billing_invoice_number_key")
    first, second = Invoice.objects.order_by("number")[:2]
    sql("UPDATE billing_invoice SET number = %s WHERE id = %s", [first.number, second.pk])
    assert any("duplicate" in v.message for v in ledger_check(now=NOW))


def test_paid_invoice_whose_payments_do_not_cover_it(world):
    sql(
        "UPDATE billing_payment SET amount = amount - 1 "
        "WHERE invoice_id = %s AND status = 'succeeded'",
        [renewal_invoice().pk],
    )
    found = [v for v in ledger_check(now=NOW) if v.rule == "payments"]
    assert any("successful payments add up to" in v.message for v in found)


def test_two_successful_payments_for_one_invoice(world):
    sql("DROP INDEX payment_one_success_per_invoice")
    invoice = renewal_invoice()
    sql(
        "INSERT INTO billing_payment (organisation_id, invoice_id, method_kind, attempt, "
        "amount, currency, status, idempotency_key, processor_id, failure_code, "
        "failure_message, reference, created_at) SELECT organisation_id, invoice_id, "
        "method_kind, attempt + 1, amount, currency, status, idempotency_key || '-again', "
        "processor_id, '', '', '', created_at "
        "FROM billing_payment WHERE invoice_id = %s AND status = 'succeeded'",
        [invoice.pk],
    )
    found = [v for v in ledger_check(now=NOW) if v.rule == "payments"]
    assert any("2 successful payments for one invoice" in v.message for v in found)


def test_open_invoice_with_a_successful_payment(world):
    sql("UPDATE billing_invoice SET status = 'open' WHERE id = %s", [renewal_invoice().pk])
    assert any("Open, yet" in v.message for v in ledger_check(now=NOW))


def test_payment_booked_to_another_organisations_invoice(world, other_org):
    sql(
        "UPDATE billing_payment SET organisation_id = %s WHERE invoice_id = %s",
        [other_org.pk, renewal_invoice().pk],
    )
    assert any("another organisation" in v.message for v in ledger_check(now=NOW))


def test_upgrade_invoice_different_from_the_quote(world):
    invoice = Invoice.objects.get(kind="upgrade")
    sql(
        "UPDATE subscriptions_planchange SET quote_total = quote_total + 1 WHERE id = %s",
        [invoice.plan_change_id],
    )
    found = [v for v in ledger_check(now=NOW) if v.rule == "upgrade_quotes"]
    assert len(found) == 1
    assert "the quote shown was" in found[0].message


def test_overage_different_from_the_counters(world):
    sql("UPDATE billing_overagecharge SET transactions = transactions + 5")
    found = [v for v in ledger_check(now=NOW) if v.rule == "overage"]
    assert any("the counters say 3,500" in v.message for v in found)


def test_overage_not_on_its_invoice(world):
    sql("UPDATE billing_overagecharge SET amount = amount + 100, unit_amount = unit_amount + 50")
    assert any("carries" in v.message for v in ledger_check(now=NOW) if v.rule == "overage")


def test_a_month_over_the_limit_never_billed(localstripe, org, admin):
    Plan.objects.filter(code="standard").update(monthly_transactions=2_000)
    subscribe(org, plan="standard")
    ingest(org, count=2_500, at=datetime(2026, 2, 10, 8, 0, tzinfo=UTC), batch="feb")
    assert billing_run_issue(now=RENEWAL) == 1
    assert ledger_check(now=NOW) == []
    sql("DELETE FROM billing_overagecharge")
    found = [v for v in ledger_check(now=NOW) if v.rule == "overage"]
    assert any("no overage billed" in v.message for v in found)


def test_usage_counters_different_from_sync_info(world):
    sql("UPDATE usage_usagecounter SET transactions = transactions + 1 WHERE day = '2026-03-12'")
    nightly = [
        v
        for v in ledger_check(now=datetime(2026, 3, 13, 9, 0, tzinfo=UTC))
        if v.rule == "usage_counters"
    ]
    assert [v.message for v in nightly] == [
        "On 2026-03-12 the counters say 41 transactions, 40 Sync Info rows are stored."
    ]
    # The same, found for one organisation over its last 28 days.
    assert "usage_counters" in rules(ledger_check(now=NOW, organisation_ids=[world.pk]))


def test_status_without_a_dunning_case(world):
    Subscription.objects.filter(organisation=world).update(status="past_due")
    found = [v for v in ledger_check(now=NOW) if v.rule == "status"]
    assert {v.message for v in found} == {
        "Status past_due without an open dunning case.",
        "Status past_due without an open invoice.",
    }


# Recording, the command and the job ----------------------------------------------------------


def test_nightly_record_opens_refreshes_and_closes(world):
    assert ledger_record(now=NOW) == {"found": 0, "new": 0, "closed": 0}
    break_quote()
    assert ledger_record(now=NOW) == {"found": 1, "new": 1, "closed": 0}
    assert ledger_record(now=NOW + timedelta(days=1)) == {"found": 1, "new": 0, "closed": 0}
    row = LedgerViolation.objects.get()
    assert (row.rule, row.organisation, row.resolved_at) == ("upgrade_quotes", world, None)
    assert row.last_seen_at == NOW + timedelta(days=1)
    break_quote(by=-1)
    assert ledger_record(now=NOW + timedelta(days=2)) == {"found": 0, "new": 0, "closed": 1}
    assert LedgerViolation.objects.get().resolved_at == NOW + timedelta(days=2)


def test_the_job_runs_through_tick(world):
    assert run_job("ledger_check", now=NOW) == "0 ledger violation(s) open, 0 new, 0 closed"


def test_check_ledger_command(world, capsys):
    call_command("check_ledger", "--now", NOW.isoformat())
    assert "Ledger OK" in capsys.readouterr().out
    call_command("check_ledger", "--org", world.slug, "--now", NOW.isoformat())
    capsys.readouterr()
    break_quote()
    with pytest.raises(CommandError) as error:
        call_command("check_ledger", "--now", NOW.isoformat())
    assert error.value.returncode == 1
    lines = capsys.readouterr().out.strip().splitlines()
    upgrade_invoice = Invoice.objects.get(kind="upgrade")
    assert len(lines) == 1
    assert lines[0].startswith(f"upgrade_quotes\tinvoice:{upgrade_invoice.number}\t")


def test_check_ledger_with_an_unknown_slug(db):
    with pytest.raises(CommandError) as error:
        call_command("check_ledger", "--org", "no-such-org")
    assert str(error.value) == "No organisation with the slug 'no-such-org'."
    assert error.value.returncode == 1


def test_admin_lists_the_violations(client_for, world):
    from tests.accounts.factories import UserFactory

    ledger_record(now=NOW)
    break_quote()
    ledger_record(now=NOW)
    client = client_for(UserFactory(is_staff=True))
    page = client.get("/admin/billing/ledgerviolation/?state=open")
    assert page.status_code == 200
    assert "upgrade_quotes" in page.content.decode()
