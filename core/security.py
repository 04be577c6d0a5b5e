"""Content-Security-Policy on every response
(docs/architecture.md#decision-security-headers-and-observability).

No inline script or style anywhere: our JavaScript and CSS are files under static/, Stripe.js
is the one script from elsewhere. htmx is not used; served from static/ it would be 'self'.
The Stripe origins come from settings.STRIPE_JS_URL: the real Stripe.js (its frames and
api.stripe.com) in production, localstripe's mock (one origin for the script and its API
calls) in development and tests.

A view that needs more on one page says so on its response, e.g. a form that leads to an
SSO Identity Provider:

    return csp_extend(response, "form-action", idp_origin)
"""

from urllib.parse import urlsplit

from django.conf import settings

STRIPE_JS_ORIGIN = "https://js.stripe.com"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def policy() -> dict[str, list[str]]:
    """The site-wide policy, directive by directive."""
    stripe_js = origin(settings.STRIPE_JS_URL)
    if stripe_js == STRIPE_JS_ORIGIN:
        # https://docs.stripe.com/security/guide#content-security-policy
        stripe_scripts = [STRIPE_JS_ORIGIN, "https://*.js.stripe.com"]
        stripe_frames = [*stripe_scripts, "https://hooks.stripe.com"]
        stripe_api = ["https://api.stripe.com"]
    else:
        # localstripe: the mock calls the API on the origin it was loaded from; no frames.
        stripe_scripts, stripe_frames, stripe_api = [stripe_js], [], [stripe_js]
    return {
        "default-src": ["'self'"],
        "script-src": ["'self'", *stripe_scripts],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'", *stripe_api],
        "frame-src": stripe_frames or ["'none'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }


def csp_extend(response, directive: str, *sources: str):
    """Allow more `sources` for `directive` on this response only."""
    extra = getattr(response, "csp_extra", {})
    extra.setdefault(directive, []).extend(sources)
    response.csp_extra = extra
    return response


def header_value(extra: dict[str, list[str]] | None = None) -> str:
    directives = policy()
    for directive, sources in (extra or {}).items():
        current = directives.setdefault(directive, [])
        if current == ["'none'"]:
            current.clear()
        current.extend(source for source in sources if source not in current)
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.DEBUG and response.status_code in (404, 500):
            # Django's debug error pages are all inline style and script; they exist in
            # development only, where a readable traceback matters more.
            return response
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = header_value(getattr(response, "csp_extra", None))
        return response
