import factory
from allauth.account.models import EmailAddress
from django.utils import timezone

from accounts.models import Invitation, Membership, Organisation, User
from accounts.tokens import new_token

PASSWORD = "correct-horse-battery-9"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.test")
    full_name = factory.Faker("name")
    password = factory.django.Password(PASSWORD)

    @factory.post_generation
    def verified(obj, create, extracted, **kwargs):
        if create and extracted is not False:
            EmailAddress.objects.create(user=obj, email=obj.email, primary=True, verified=True)


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Organisation {n}")
    slug = factory.Sequence(lambda n: f"organisation-{n}")
    primary_email = factory.Sequence(lambda n: f"billing{n}@company.test")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organisation = factory.SubFactory(OrganisationFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.MEMBER


class InvitationFactory(factory.django.DjangoModelFactory):
    """An invitation whose raw token is kept on the instance as `.token` for tests."""

    class Meta:
        model = Invitation

    organisation = factory.SubFactory(OrganisationFactory)
    email = factory.Sequence(lambda n: f"invitee{n}@example.test")
    role = Membership.Role.MEMBER
    expires_at = factory.LazyFunction(lambda: timezone.now() + timezone.timedelta(days=7))
    token_hash = ""

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        token, digest = new_token()
        kwargs["token_hash"] = digest
        invitation = super()._create(model_class, *args, **kwargs)
        invitation.token = token
        return invitation
