"""Settings for the billing portal, read from environment variables.

Development defaults make `make run` work with no configuration. With DEBUG off the
production rules apply: SECRET_KEY and ALLOWED_HOSTS are required, cookies are secure,
HSTS is on and the app trusts X-Forwarded-Proto from its proxy.
"""

from pathlib import Path

from billing_portal.env import (
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_required,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(env_str("RUN_DIR", str(BASE_DIR / ".run")))

# Off unless asked for: a deployment that forgets DEBUG must not run in debug mode.
DEBUG = env_bool("DEBUG", False)

if DEBUG:
    SECRET_KEY = env_str("SECRET_KEY") or "dev-only-insecure-key-never-use-in-production"  # noqa: S105
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
else:
    SECRET_KEY = env_required("SECRET_KEY")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
    if not ALLOWED_HOSTS:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")

PRODUCT_NAME = env_str("PRODUCT_NAME", "APPSeCONNECT")
# Absolute links in emails sent outside a request (scheduled jobs) start with this.
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "portal.apps.PortalAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.forms",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    # allauth.mfa's security key pages use naturaltime.
    "django.contrib.humanize",
    "django_countries",
    "core",
    "accounts",
    "subscriptions",
    "billing",
    "usage",
    "sso",
    "support",
    "retention",
    "portal",
]

MIDDLEWARE = [
    "core.observability.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "core.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Session records and the sign-in notices' browser cookie (accounts.middleware).
    "accounts.middleware.SessionRecordMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    # allauth.mfa's management pages lead to the Security page's own (accounts.middleware).
    "accounts.middleware.AllauthManagementPagesMiddleware",
]

ROOT_URLCONF = "billing_portal.urls"
WSGI_APPLICATION = "billing_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.portal",
                "billing.context_processors.account_state",
            ],
        },
    },
]
FORM_RENDERER = "core.forms.FormRenderer"

DATABASES = {
    "default": database_from_url(
        env_str("DATABASE_URL", "postgres://portal@127.0.0.1:55432/billing_portal")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:56379/0")
CACHES = {
    "default": {
        # Django's Redis cache that fails open: it holds rate-limit counters and allauth's
        # used-code markers (which fail closed, below) only.
        "BACKEND": "core.ratelimit.FailOpenRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "portal",
        "TIMEOUT": 300,
        "OPTIONS": {
            # allauth marks a used authenticator-app code with cache.add: while Redis is away
            # that code is refused rather than accepted twice (recovery codes and security
            # keys live in Postgres and still work).
            "FAIL_CLOSED_ADD_PREFIXES": ["allauth.mfa.totp.used"],
        },
    }
}
# Sessions live in Postgres: signing in keeps working while Redis is down, and ending a
# user's sessions is a database update (see accounts.models.User.get_session_auth_hash).
# Database sessions with a record of each
# (docs/architecture.md#decision-session-records-and-sign-in-notices).
SESSION_ENGINE = "accounts.session_store"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 60 * 60 * 24 * 14)

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "accounts:home"

# django-allauth: sign in by email, verified addresses only.
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_FORMS = {"signup": "accounts.forms.SignupForm", "login": "accounts.forms.LoginForm"}
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_EMAIL_CONFIRMATION_EXPIRE_DAYS = 3
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_SESSION_REMEMBER = None
ACCOUNT_PRESERVE_USERNAME_CASING = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = ""
ACCOUNT_RATE_LIMITS = {
    # Failed sign-ins: 5 per 5 minutes per account, 20 per minute per IP address.
    "login_failed": "5/5m/key,20/m/ip",
    "login": "30/m/ip",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/5m/key",
    "reset_password_from_key": "20/m/ip",
    "confirm_email": "1/3m/key",
    "change_password": "5/m/user",
}
# Two-factor sign-in on allauth.mfa
# (docs/architecture.md#decision-two-factor-sign-in-builds-on-allauth-mfa).
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_TOTP_ISSUER = PRODUCT_NAME
# 0: only the current 30-second code is accepted. A wider window would make a shoulder-surfed or
# phished code usable for longer; phone clocks are network-synced, so drift is rare.
MFA_TOTP_TOLERANCE = 0
MFA_RECOVERY_CODE_COUNT = 10
# Recovery codes are shown (and downloadable) once, right after they are generated.
MFA_RECOVERY_CODES_SHOW_ONCE = True
MFA_FORMS = {"deactivate_totp": "accounts.security_forms.DeactivateTOTPForm"}
# Security keys as a second factor only; passkey sign-in (no password) is not offered.
MFA_PASSKEY_LOGIN_ENABLED = False
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
# Our own limits (core/ratelimit.py), per client IP: opening or submitting an
# emailed link, unknown link tokens (guessing), starting an SSO sign-in (one SsoRequest row
# each; an office behind one address signs in together, hence as many as password sign-ins).
RATE_LIMITS = {
    "invitation": "20/m",
    "primary_email_verify": "20/m",
    "link_invalid": "10/10m",
    "sso_start": "30/m",
    # The machine API: requests with a missing or wrong key, per client address.
    "api_auth_failed": "60/m",
}
# The machine API, per key (usage/api.py; README "Machine API"). Generous: a runtime sends
# batches of about 1,000 records, a few in parallel at most.
API_RATE_LIMIT = env_str("API_RATE_LIMIT", "600/m")

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")))

# Email: files + console in development, SMTP in production.
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", f"{PRODUCT_NAME} <no-reply@example.com>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "core.mail_backend.DevEmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_FILE_PATH = Path(env_str("EMAIL_FILE_PATH", str(RUN_DIR / "mail")))
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20)

# Celery: Redis as broker; tasks acknowledged after they finish so a killed worker's task re-runs.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # A task of a worker that died without acking (SIGKILL of the whole worker, a lost
    # machine) goes back to the queue after this long; a killed pool child's task comes back
    # at once (REJECT_ON_WORKER_LOST). Longer than any task, or a slow one runs twice.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
    # A hung Redis (connection open, no answer) fails .delay() in seconds: without these a
    # request queueing an email waits forever (tests/faults/test_redis_down.py).
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
}
# Web requests only queue work that a scheduled job also picks up (emails, PDFs): one quick
# retry (a connection dropped by a Redis restart), then give up instead of holding the page.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

# How a request's client address is found for the audit log. Behind one trusted proxy set
# TRUSTED_PROXY_COUNT=1 so the last X-Forwarded-For hop is used; never trust it otherwise.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)

INVITATION_VALID_DAYS = 7
# SAML SSO: IdP metadata URLs on loopback/private addresses (and plain http) are refused
# outside development, where a local test IdP is the norm.
SSO_METADATA_ALLOW_PRIVATE_URLS = env_bool("SSO_METADATA_ALLOW_PRIVATE_URLS", DEBUG)
# How long a started SSO sign-in may take at the IdP before its answer is refused.
SSO_REQUEST_VALID_MINUTES = 10
PRIMARY_EMAIL_CHANGE_VALID_DAYS = 3
CURRENCIES = ["USD", "EUR", "GBP"]

# Content-Security-Policy: core/security.py (a middleware, every response).
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
# Lax: the IdP's POST to the ACS comes without our session, and needs none (sso/views.py).
SESSION_COOKIE_SAMESITE = "Lax"
# No script of ours reads the CSRF cookie: every form carries the token.
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
# allauth's per-IP limits must see the client behind our proxy, as the audit log does.
ALLAUTH_TRUSTED_PROXY_COUNT = TRUSTED_PROXY_COUNT
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Load balancers probe over plain http inside the network (README "Logs and health").
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

# Logs (README "Logs and health"): JSON lines in production, readable lines in development;
# every line carries the request id (the task id in a Celery worker).
LOG_FORMAT = env_str("LOG_FORMAT", "plain" if DEBUG else "json")
if LOG_FORMAT not in {"json", "plain"}:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "core.observability.LogContextFilter"}},
    "formatters": {
        "plain": {"()": "core.observability.PlainFormatter"},
        "json": {"()": "core.observability.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Without Django's default handlers (a DEBUG-only console, mail to the unset ADMINS) its
        # lines reach the console once, through root, with the request id.
        "django": {"handlers": []},
        # runserver's own line per request: billing_portal.request writes a fuller one.
        "django.server": {"level": "WARNING"},
        # Both log every request/render at INFO; keep their warnings and errors.
        "stripe": {"level": "WARNING"},
        "weasyprint": {"level": "WARNING"},
        "fontTools": {"level": "WARNING"},
    },
}

# In development and tests WhiteNoise serves straight from the app folders (no collectstatic).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# The seller printed on invoices and used for the tax rules (EU reverse charge).
SELLER = {
    "name": env_str("SELLER_NAME", "APPSeCONNECT Ltd"),
    "address": env_str("SELLER_ADDRESS", "1 Harbour Square, Dublin D02 XY00, Ireland"),
    "country": env_str("SELLER_COUNTRY", "IE"),
    "vat_number": env_str("SELLER_VAT_NUMBER", "IE6388047V"),
    "email": env_str("SELLER_BILLING_EMAIL", "billing@appseconnect.com"),
}
# The seller's calendar: the year in an invoice number (INV-2027-000001) is the seller's year,
# so numbering starts again at the seller's New Year, not at UTC's.
SELLER_TIME_ZONE = env_str("SELLER_TIME_ZONE", "Europe/Dublin")
# Stripe reconciliation (billing/reconciliation.py) compares this many days of charges.
RECONCILIATION_DAYS = env_int("RECONCILIATION_DAYS", 3)
# Shown on Contact billing support (article section 13).
SUPPORT_BILLING_EMAIL = env_str("SUPPORT_BILLING_EMAIL", SELLER["email"])
# Printed on bank-transfer invoices.
SELLER_BANK_DETAILS = env_str(
    "SELLER_BANK_DETAILS",
    "Bank of Ireland · IBAN IE29 AIBK 9311 5212 3456 78 · BIC AIBKIE2D",
)
INVOICE_PAYMENT_TERMS_DAYS = env_int("INVOICE_PAYMENT_TERMS_DAYS", 30)

# Stripe is the card processor only (Customer, SetupIntent, PaymentIntent; billing/gateway.py).
# The defaults point at localstripe, the stand-in scripts/services.sh runs for dev and tests.
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "http://127.0.0.1:58420")
_REAL_STRIPE = STRIPE_API_BASE.startswith("https://api.stripe.com")
if _REAL_STRIPE and not DEBUG:
    # Real money: never fall back to the local defaults.
    STRIPE_SECRET_KEY = env_required("STRIPE_SECRET_KEY")
    STRIPE_WEBHOOK_SECRET = env_required("STRIPE_WEBHOOK_SECRET")
else:
    STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "sk_test_localstripe")
    STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "whsec_localstripe")
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "pk_test_localstripe")
STRIPE_JS_URL = env_str(
    "STRIPE_JS_URL",
    "https://js.stripe.com/v3/" if _REAL_STRIPE else f"{STRIPE_API_BASE}/js.stripe.com/v3/",
)
STRIPE_TIMEOUT_SECONDS = env_int("STRIPE_TIMEOUT_SECONDS", 20)
ACCEPTED_CARD_BRANDS = ("visa", "mastercard", "amex")

# The machine API accepts batches of up to 10 MB (usage/api.py checks the exact limit).
DATA_UPLOAD_MAX_MEMORY_SIZE = 11 * 1024 * 1024
