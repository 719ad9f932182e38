"""A small Django project for tests/test_contrib_django.py (pytest-django loads it)."""

from __future__ import annotations

import os
import urllib.parse

_PG = urllib.parse.urlsplit(
    os.environ.get("OUTLAST_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)

SECRET_KEY = "outlast-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.django_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "outlast.contrib.django",
    "tests.django_project.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    # The app's PostgreSQL, for triggering inside its transactions; a name per test
    # session, since sessions share the server (pytest-django creates test_<name>).
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": f"outlast_dj_{os.getpid()}",
        "USER": _PG.username or "postgres",
        "PASSWORD": _PG.password or "",
        "HOST": _PG.hostname or "127.0.0.1",
        "PORT": str(_PG.port or 5432),
    },
}
OUTLAST = {"ENV": "dev"}
