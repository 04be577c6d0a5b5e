from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Membership, Organisation, User
from devkit.stripe_standin import standin_request

pytestmark = pytest.mark.django_db


def counts():
    return (Organisation.objects.count(), User.objects.count(), Membership.objects.count())


def test_seed_demo_creates_the_demo_logins_and_is_idempotent(settings, localstripe):
    settings.DEBUG = True
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert counts() == (2, 5, 4)
    call_command("seed_demo", stdout=StringIO())
    assert counts() == (2, 5, 4)
    acme = Organisation.objects.get(slug="acme-trading")
    roles = dict(Membership.objects.filter(organisation=acme).values_list("user__email", "role"))
    assert roles == {
        "admin@acme.example": "admin",
        "billing@acme.example": "billing",
        "member@acme.example": "member",
    }
    assert User.objects.get(email="admin@globex.example").check_password("demo-pass-2026")
    ops = User.objects.get(email="ops@example.com")
    assert ops.is_staff
    assert not ops.memberships.exists()
    assert "admin@acme.example" in out.getvalue()
    assert "demo-pass-2026" in out.getvalue()


def test_seed_demo_refuses_with_debug_off(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="runs only with DEBUG on"):
        call_command("seed_demo")
    assert counts() == (0, 0, 0)


def test_demo_admin_can_sign_in(client, settings, localstripe):
    settings.DEBUG = True
    call_command("seed_demo", stdout=StringIO())
    response = client.post(
        "/accounts/login/", {"login": "admin@acme.example", "password": "demo-pass-2026"}
    )
    assert response.status_code == 302
    assert client.get("/", follow=True).redirect_chain[-1][0] == "/o/acme-trading/"


def test_seed_demo_again_after_the_stripe_stand_in_forgot_everything(settings, localstripe):
    from billing.models import PaymentMethod

    settings.DEBUG = True
    call_command("seed_demo", stdout=StringIO())
    standin_request("/_config/data", method="DELETE")  # as a restarted localstripe
    call_command("seed_demo", stdout=StringIO())
    acme = Organisation.objects.get(slug="acme-trading")
    assert PaymentMethod.objects.filter(organisation=acme, status="active").count() == 1
    assert PaymentMethod.objects.filter(organisation=acme, status="replaced").count() == 1
