"""Settings > SSO (Admins) and the public SAML endpoints: Sign in with SSO, the SP metadata,
starting a sign-in or a test, and the ACS that receives the IdP's answer."""

from django.conf import settings as django_settings
from django.contrib import messages
from django.contrib.auth import login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from accounts import hooks
from accounts.audit import Actor
from accounts.models import Organisation
from accounts.roles import ADMIN_ONLY
from accounts.tenancy import SESSION_KEY, SSO_SESSION_KEY, tenant_view
from core import ratelimit
from core.errors import ServiceError
from core.forms import form_error
from core.http import client_ip
from core.links import absolute_url
from core.security import csp_extend, origin
from sso import domains, saml, selectors
from sso.authn_requests import new_browser_token, sign_in_start
from sso.certificates import certificate_warnings
from sso.configuration import configuration_for, idp_configure, sso_available
from sso.enforcement import backup_admin_is_valid, enforcement_set
from sso.forms import (
    DomainForm,
    EnforcementForm,
    IdentityProviderForm,
    ProvisioningForm,
    SignInForm,
)
from sso.models import SsoAttempt
from sso.provisioning import provisioning_set
from sso.responses import response_consume

BROWSER_COOKIE = "sso_state"
BROWSER_COOKIE_MAX_AGE = 60 * 60 * 24 * 30

SETUP_STEPS = {
    "azure_ad": [
        "In the Microsoft Entra admin center, open Enterprise applications > New application > "
        "Create your own application (non-gallery).",
        "Under Single sign-on choose SAML; set Identifier (Entity ID) and Reply URL (Assertion "
        "Consumer Service URL) to the values above.",
        "Keep the user.mail claim as the Name ID (email address format).",
        "Copy the App Federation Metadata URL and paste it below.",
    ],
    "okta": [
        "In Okta Admin, open Applications > Create App Integration > SAML 2.0.",
        "Set Single sign-on URL to our ACS URL and Audience URI (SP Entity ID) to our Entity ID.",
        "Name ID format: EmailAddress; Application username: Email.",
        "Assign the app to your users, then copy the Metadata URL from the Sign On tab.",
    ],
    "google": [
        "In the Google Admin console, open Apps > Web and mobile apps > Add custom SAML app.",
        "Download the IdP metadata (or copy it), then set ACS URL and Entity ID to ours.",
        "Name ID format: EMAIL, Name ID: Basic Information > Primary email.",
        "Turn the app on for your users and paste the metadata below.",
    ],
    "custom": [
        "Create a SAML 2.0 application in your IdP with our Entity ID and ACS URL "
        "(HTTP-POST binding), or import our SP metadata.",
        "Send the user's email address as the NameID (or an 'email' attribute) and sign the "
        "assertion with SHA-256.",
        "Copy your IdP's metadata URL or XML and paste it below.",
    ],
}


def _settings_context(request, *, forms=None, warnings=()):
    organisation = request.organisation
    now = timezone.now()
    config = configuration_for(organisation)
    forms = forms or {}
    enforcement_initial = {"backup_admin": config.backup_admin_id, "enforced": config.enforced}
    return {
        "config": config,
        "available": sso_available(organisation),
        "sp_entity_id": saml.sp_entity_id(organisation),
        "acs_url": saml.acs_url(organisation),
        "metadata_url": saml.sp_entity_id(organisation),
        "test_url": absolute_url("sso:test", organisation.slug),
        "idp_form": forms.get("idp")
        or IdentityProviderForm(
            initial={
                "idp_type": config.idp_type,
                "metadata_url": config.metadata_url,
                "metadata_xml": config.metadata_xml,
            }
        ),
        "domain_form": forms.get("domain") or DomainForm(),
        "provisioning_form": forms.get("provisioning")
        or ProvisioningForm(
            initial={
                "provision_users": config.provision_users,
                "provision_role": config.provision_role,
            }
        ),
        "enforcement_form": forms.get("enforcement")
        or EnforcementForm(initial=enforcement_initial, organisation=organisation),
        "domains": selectors.domains_of(organisation),
        "attempts": list(selectors.attempts_recent(organisation)),
        "certificate_warnings": certificate_warnings(config, now=now),
        "warnings": warnings,
        "setup_steps": SETUP_STEPS,
        "backup_admin_lapsed": config.enforced and not backup_admin_is_valid(config),
        "now": now,
    }


def _idp_form_action(response, config):
    """Let this page's forms lead to the IdP. Browsers apply the CSP form-action to the
    redirects after a submission too, and Test SSO and sign-in answer with a redirect there."""
    if config.idp_sso_url:
        csp_extend(response, "form-action", origin(config.idp_sso_url))
    return response


def _page(request, status=200, **kwargs):
    context = _settings_context(request, **kwargs)
    if not context["available"]:
        return render(request, "sso/unavailable.html", context, status=status)
    response = render(request, "sso/settings.html", context, status=status)
    return _idp_form_action(response, context["config"])


@tenant_view(roles=ADMIN_ONLY, section="sso")
@require_safe
def settings(request):
    """Settings > SSO (article section 10)."""
    return _page(request)


def _save(request, form, *, key, action, success):
    """The POST of one form on the SSO page: `action(cleaned_data)` calls the service; its
    refusal shows on the form, success redirects back to the page with `success(result)`."""
    if not sso_available(request.organisation):
        raise PermissionDenied("Single sign-on is part of the Enterprise plan.")
    if form.is_valid():
        try:
            result = action(form.cleaned_data)
        except ServiceError as error:
            form_error(form, error)
        else:
            for message in success(result):
                messages.add_message(request, *message)
            return redirect("sso:settings", org_slug=request.organisation.slug)
    return _page(request, status=400, forms={key: form})


def _changed_by(request) -> dict:
    return {
        "organisation": request.organisation,
        "actor": Actor.from_request(request),
        "now": timezone.now(),
    }


@tenant_view(roles=ADMIN_ONLY, section="sso")
@require_POST
def idp_save(request):
    def saved(result):
        config, warnings = result
        yield from ((messages.WARNING, warning) for warning in warnings)
        yield (
            messages.SUCCESS,
            f"Saved. Your IdP {config.idp_entity_id} is set up; run Test SSO next.",
        )

    return _save(
        request,
        IdentityProviderForm(request.POST),
        key="idp",
        action=lambda data: idp_configure(
            idp_type=data["idp_type"],
            metadata_url=data["metadata_url"],
            metadata_xml=data["metadata_xml"],
            **_changed_by(request),
        ),
        success=saved,
    )


@tenant_view(roles=ADMIN_ONLY, section="sso")
@require_POST
def domain_add(request):
    return _save(
        request,
        DomainForm(request.POST),
        key="domain",
        action=lambda data: domains.domain_add(domain=data["domain"], **_changed_by(request)),
        success=lambda claim: [
            (messages.SUCCESS, f"{claim.domain} now signs in through your IdP.")
        ],
    )


@tenant_view(roles=ADMIN_ONLY, section="sso")
@require_POST
def domain_remove(request, domain_id):
    claim = selectors.domain_of(request.organisation, domain_id)
    if claim is None:
        raise Http404("No such domain.")
    domains.domain_remove(claim=claim, actor=Actor.from_request(request), now=timezone.now())
    messages.success(request, f"{claim.domain} removed.")
    return redirect("sso:settings", org_slug=request.organisation.slug)


@tenant_view(roles=ADMIN_ONLY, section="sso")
@require_POST
def provisioning_save(request):
    return _save(
        request,
        ProvisioningForm(request.POST),
        key="provisioning",
        action=lambda data: provisioning_set(
            enabled=data["provision_users"], role=data["provision_role"], **_changed_by(request)
        ),
        success=lambda _config: [(messages.SUCCESS, "New-user settings saved.")],
    )


@tenant_view(roles=ADMIN_ONLY, section="sso")
@require_POST
def enforcement_save(request):
    return _save(
        request,
        EnforcementForm(request.POST, organisation=request.organisation),
        key="enforcement",
        action=lambda data: enforcement_set(
            enforced=data["enforced"], backup_admin=data["backup_admin"], **_changed_by(request)
        ),
        success=lambda config: [
            (
                messages.SUCCESS,
                "SSO is now enforced for all users except the backup admin."
                if config.enforced
                else "SSO is not enforced: everyone can also sign in with a password.",
            )
        ],
    )


# Public SAML endpoints --------------------------------------------------------------------


def _organisation(organisation_slug) -> Organisation:
    organisation = selectors.organisation_active(organisation_slug)
    if organisation is None or not sso_available(organisation):
        raise Http404("No single sign-on here.")
    return organisation


@require_GET
def metadata(request, organisation_slug):
    """Our SP metadata for the organisation's IdP; it exists before the IdP is configured."""
    config = configuration_for(_organisation(organisation_slug))
    return HttpResponse(saml.sp_metadata_xml(config), content_type="application/samlmetadata+xml")


def _browser_token(request, response=None) -> str:
    token = request.COOKIES.get(BROWSER_COOKIE)
    if not token or len(token) > 100:
        token = new_browser_token()
    return token


def _set_browser_cookie(request, response, token):
    # SameSite=None: the IdP posts its answer from its own site, and a Lax cookie would not
    # come with it. Browsers accept None only on a Secure cookie; they also keep Secure
    # cookies for http://127.0.0.1 and localhost, which development uses.
    response.set_cookie(
        BROWSER_COOKIE,
        token,
        max_age=BROWSER_COOKIE_MAX_AGE,
        secure=True,
        httponly=True,
        samesite="None",
        path=reverse("sso:sign_in"),
    )
    return response


def _start(request, organisation, *, mode, next_url=""):
    # Each start stores an SsoRequest: anonymous callers get a budget per address.
    decision = ratelimit.hit(request, "sso_start")
    if not decision.allowed:
        return ratelimit.too_many_requests(request, decision)
    token = _browser_token(request)
    try:
        url = sign_in_start(
            organisation=organisation,
            mode=mode,
            browser_token=token,
            next_url=next_url,
            now=timezone.now(),
        )
    except ServiceError as error:
        return render(
            request,
            "sso/failed.html",
            {"organisation": organisation, "reason": error.message},
            status=409,
        )
    return _set_browser_cookie(request, redirect(url), token)


@never_cache
@require_GET
def login_start(request, organisation_slug):
    """SP-initiated sign-in: send the browser to the organisation's IdP."""
    organisation = _organisation(organisation_slug)
    return _start(
        request, organisation, mode=SsoAttempt.Mode.SIGN_IN, next_url=request.GET.get("next", "")
    )


@never_cache
@require_http_methods(["GET", "POST"])
def test_start(request, organisation_slug):
    """Test SSO: sign in through the IdP without signing in here, and see exactly what came
    back. Anyone can run it, so an Admin can hand the link to a non-admin colleague."""
    organisation = _organisation(organisation_slug)
    if request.method == "POST":
        return _start(request, organisation, mode=SsoAttempt.Mode.TEST)
    config = configuration_for(organisation)
    response = render(
        request, "sso/test_start.html", {"organisation": organisation, "config": config}
    )
    return _idp_form_action(response, config)


@csrf_exempt  # the IdP posts here; the signature and the InResponseTo binding protect it
@never_cache
@require_POST
def acs(request, organisation_slug):
    """Assertion Consumer Service: the IdP's answer (HTTP-POST binding)."""
    organisation = selectors.organisation_active(organisation_slug)
    if organisation is None:
        raise Http404("No single sign-on here.")
    outcome = response_consume(
        organisation=organisation,
        saml_response=request.POST.get("SAMLResponse", ""),
        browser_token=request.COOKIES.get(BROWSER_COOKIE),
        ip_address=client_ip(request),
        now=timezone.now(),
    )
    if outcome.mode == SsoAttempt.Mode.TEST:
        return render(
            request,
            "sso/test_result.html",
            {"organisation": organisation, "outcome": outcome, "attempt": outcome.attempt},
            status=outcome.status,
        )
    if not outcome.succeeded:
        return render(
            request,
            "sso/failed.html",
            {"organisation": organisation, "reason": outcome.reason},
            status=outcome.status,
        )
    login(request, outcome.user, backend="django.contrib.auth.backends.ModelBackend")
    request.session[SSO_SESSION_KEY] = organisation.pk
    request.session[SESSION_KEY] = organisation.slug
    return redirect(outcome.next_url or hooks.overview_url(organisation.slug))


@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request):
    """ "Sign in with SSO": the work email's domain picks the organisation and its IdP."""
    form = SignInForm(request.POST or None, initial={"email": request.GET.get("email", "")})
    next_url = request.POST.get("next") or request.GET.get("next", "")
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"]
        organisation = selectors.organisation_for_email(email)
        if organisation is None or not sso_available(organisation):
            form.add_error(
                "email",
                f"Single sign-on is not set up for {email.rpartition('@')[2]}. Sign in with "
                "your password, or ask your administrator.",
            )
        else:
            return _start(request, organisation, mode=SsoAttempt.Mode.SIGN_IN, next_url=next_url)
    response = render(
        request,
        "sso/sign_in.html",
        {"form": form, "next": next_url},
        status=400 if form.errors else 200,
    )
    # The IdP is known only once the email is in, so this one form may lead to any web
    # address (http too where development IdPs are allowed).
    schemes = ["https:"]
    if django_settings.SSO_METADATA_ALLOW_PRIVATE_URLS:
        schemes.append("http:")
    return csp_extend(response, "form-action", *schemes)
