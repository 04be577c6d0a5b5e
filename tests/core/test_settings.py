"""Production settings: secrets required, secure defaults, `check --deploy` clean."""

import os
import subprocess
import sys

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "x" * 64 + "-a-long-random-production-secret",
    "ALLOWED_HOSTS": "portal.example.com",
    "DJANGO_SETTINGS_MODULE": "billing_portal.settings",
}


def run(code_or_args, env_changes):
    # The browser tests allow async-unsafe calls in this process; a deployment never does.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(env_changes)
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, check=False
    )


def test_secret_key_is_required_when_debug_is_off():
    result = run("import django; django.setup()", {**PRODUCTION})
    assert result.returncode == 0, result.stderr
    result = run(
        "import django; django.setup()",
        {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"} | {"SECRET_KEY": ""},
    )
    assert result.returncode != 0
    assert "The environment variable SECRET_KEY must be set." in result.stderr


def test_allowed_hosts_are_required_when_debug_is_off():
    result = run("import django; django.setup()", PRODUCTION | {"ALLOWED_HOSTS": ""})
    assert "ALLOWED_HOSTS must be set when DEBUG is off." in result.stderr


def test_production_settings_are_secure():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, "
        "s.SECURE_PROXY_SSL_HEADER, s.SECURE_SSL_REDIRECT, s.ALLOWED_HOSTS, s.PRODUCT_NAME)"
    )
    result = run(code, PRODUCTION)
    assert result.stdout.strip() == (
        "False True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') True "
        "['portal.example.com'] APPSeCONNECT"
    )


def test_check_deploy_is_clean_with_production_settings():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_product_name_is_a_setting():
    code = (
        "import django; django.setup(); "
        "from django.conf import settings; print(settings.PRODUCT_NAME)"
    )
    assert run(code, PRODUCTION | {"PRODUCT_NAME": "Acme iPaaS"}).stdout.strip() == "Acme iPaaS"
