"""Article section 3 in a real browser: Settings > Subscription > Change Plan, pick the lower
plan, review what is removed, choose the ProcessFlows that stay active, confirm; the change
shows on the Subscription page until the renewal and can be cancelled there."""

from datetime import timedelta

import pytest
from playwright.sync_api import expect

from accounts.models import Membership
from subscriptions.models import Plan, PlanChange
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.subscriptions.factories import (
    PERIOD_START,
    EnvironmentFactory,
    ProcessFlowFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def acme():
    """Acme on Professional with 3 active flows; ops lowered Standard to 2 active flows."""
    org = OrganisationFactory(name="Acme Trading", slug="acme")
    MembershipFactory(
        organisation=org, role=Membership.Role.ADMIN, user=UserFactory(email="ada@acme.test")
    )
    SubscriptionFactory(organisation=org, plan=Plan.objects.get(code="professional"))
    Plan.objects.filter(code="standard").update(max_process_flows=2)
    production = EnvironmentFactory(organisation=org, name="Production")
    flows = [
        ProcessFlowFactory(
            environment=production, name=name, created_at=PERIOD_START - timedelta(days=10 - n)
        )
        for n, name in enumerate(["Orders to SAP", "Invoices to Salesforce", "Stock sync"])
    ]
    return org, flows


def sign_in(page, portal):
    page.goto(f"{portal}/accounts/login/")
    page.get_by_label("Email").fill("ada@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    expect(page.get_by_role("heading", name="Acme Trading")).to_be_visible()


def test_admin_schedules_a_downgrade_keeping_chosen_flows_then_sees_it(new_page, portal, acme):
    _, (_, invoices, stock) = acme
    page = new_page()
    sign_in(page, portal)

    # Settings > Subscription > Change Plan
    page.locator(".org-menu summary").click()
    page.locator(".org-menu").get_by_role("link", name="Settings").click()
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Subscription").click()
    expect(page.get_by_role("heading", name="Subscription", exact=True)).to_be_visible()
    page.get_by_role("link", name="Change Plan").click()
    expect(page.get_by_role("heading", name="Change Plan")).to_be_visible()
    page.get_by_role("link", name="Review Standard").click()

    # The review: what is removed, when, and which flows stay active.
    expect(page.get_by_role("heading", name="Review: Professional → Standard")).to_be_visible()
    expect(page.get_by_text("at your next renewal, not immediately")).to_be_visible()
    expect(page.get_by_text("WARNING:")).to_be_visible()
    expect(page.get_by_text("1 of your 3 active ProcessFlows will pause")).to_be_visible()
    expect(page.get_by_text("Premium support → Standard support")).to_be_visible()
    expect(page.get_by_text("Keep at most 2.")).to_be_visible()
    keep = {flow.name: page.get_by_role("checkbox", name=flow.name) for flow in acme[1]}
    expect(keep["Orders to SAP"]).to_be_checked()
    expect(keep["Invoices to Salesforce"]).to_be_checked()
    expect(keep["Stock sync"]).not_to_be_checked()
    expect(page.get_by_text("2 of at most 2 chosen.")).to_be_visible()

    # Keeping all three is refused, and the choice is kept on the page.
    keep["Stock sync"].check()
    expect(page.get_by_text("3 of at most 2 chosen.")).to_be_visible()
    page.get_by_role("button", name="Confirm change to Standard").click()
    expect(
        page.get_by_text("The Standard plan includes 2 active ProcessFlows: keep at most 2")
    ).to_be_visible()
    assert not PlanChange.objects.exists()

    # Keep the two newer flows: the oldest pauses at the renewal.
    keep = {flow.name: page.get_by_role("checkbox", name=flow.name) for flow in acme[1]}
    expect(keep["Stock sync"]).to_be_checked()
    keep["Orders to SAP"].uncheck()
    page.get_by_role("button", name="Confirm change to Standard").click()

    expect(
        page.get_by_text("Your plan changes to Standard on 1 December 2026, at the renewal.")
    ).to_be_visible()
    expect(
        page.get_by_role("heading", name="Your plan changes to Standard on 1 December 2026")
    ).to_be_visible()
    change = PlanChange.objects.get()
    assert (change.status, change.to_plan.code) == ("scheduled", "standard")
    assert sorted(change.keep_flow_ids) == sorted([str(invoices.public_id), str(stock.public_id)])

    # Changed their mind: cancel the scheduled change.
    page.get_by_role("button", name="Cancel scheduled change").click()
    expect(
        page.get_by_text("The change to Standard is cancelled: you stay on Professional.")
    ).to_be_visible()
    change.refresh_from_db()
    assert change.status == "canceled"
