import pytest
from django.contrib.auth.models import Group

from billing.models import Invoice
from support.staff import BILLING
from tests.accounts.factories import UserFactory
from tests.billing.helpers import subscribe


@pytest.fixture
def subscribed(localstripe, org, admin):
    """`org` on Professional monthly since START, first invoice paid by Visa."""
    return subscribe(org)


@pytest.fixture
def ops(db):
    """Bea, of the Billing staff in Django admin: she runs the money actions."""
    user = UserFactory(is_staff=True, email="bea@portal.test")
    user.groups.add(Group.objects.get(name=BILLING))
    return user


@pytest.fixture
def paid(localstripe, org, admin):
    """Professional monthly since START, first invoice ($799.00 + 23% tax = $982.77) paid by
    card through Stripe."""
    invoice = subscribe(org)
    assert invoice.status == Invoice.Status.PAID
    return invoice
