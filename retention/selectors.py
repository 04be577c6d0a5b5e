"""Reads of retention's records, scoped to an organisation or to the signed-in user."""

from datetime import UTC

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.formats import date_format

from accounts.models import Organisation, User
from retention.models import DataDeletionRequest, DeletionRecord

# Why an organisation was deleted, as its former members read it.
_DELETED_BECAUSE = {
    DeletionRecord.Kind.CANCELLATION: "30 days after its subscription ended",
    DeletionRecord.Kind.GDPR_ORGANISATION: "at its request to delete all of its data",
}


def deleted_organisation_notices(user: User) -> list[str]:
    """The notice "Acme Trading was deleted on 31 December 2026 (...)." for each organisation
    the user belonged to when it was deleted (retention.deletion keeps their ids, no emails);
    the ten newest."""
    records = (
        DeletionRecord.objects.filter(
            kind__in=list(_DELETED_BECAUSE),
            counts__completed=True,
            counts__former_member_ids__contains=[user.pk],
        )
        .select_related("organisation")
        .order_by("-created_at", "-id")[:10]
    )
    notices = []
    for record in records:
        zone = record.organisation.tzinfo if record.organisation else UTC
        day = date_format(timezone.localtime(record.created_at, zone), "j F Y")
        notices.append(
            f"{record.organisation_label} was deleted on {day} ({_DELETED_BECAUSE[record.kind]})."
        )
    return notices


def deletion_request_list(*, organisation: Organisation) -> QuerySet[DataDeletionRequest]:
    """The organisation's data deletion requests, with who asked, about whom, and the record."""
    return DataDeletionRequest.objects.filter(organisation=organisation).select_related(
        "subject_user", "requested_by", "record"
    )
