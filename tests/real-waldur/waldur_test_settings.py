"""Settings of the Waldur MasterMind that the tests run on 127.0.0.1.

Written for the test suite (not taken from Waldur's own files): a private PostgreSQL
cluster on loopback, no Redis (local-memory cache, Celery tasks run inside the
request), no mail, and the JSON renderer only, as a production site with DEBUG off.
`tests/real-waldur/setup` and `serve` put this folder on PYTHONPATH and set
DJANGO_SETTINGS_MODULE=waldur_test_settings; the WALDUR_TEST_* variables say where the
database is.
"""

import os
from datetime import timedelta

from waldur_core.server.base_settings import *  # noqa: F403

env = os.environ

SECRET_KEY = env.get("WALDUR_TEST_SECRET_KEY", "usage-agent-tests-only")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": env.get("WALDUR_TEST_DB_NAME", "waldur"),
        "HOST": env.get("WALDUR_TEST_DB_HOST", "127.0.0.1"),
        "PORT": env.get("WALDUR_TEST_DB_PORT", "5432"),
        "USER": env.get("WALDUR_TEST_DB_USER", "waldur"),
        "PASSWORD": "",
    }
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "usage-agent-tests",
    }
}

CELERY_BROKER_URL = "memory://"
CELERY_RESULT_BACKEND = "cache+memory://"
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = False

EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"

REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"] = (  # noqa: F405
    "rest_framework.renderers.JSONRenderer",
)

MEDIA_ROOT = env.get("WALDUR_TEST_MEDIA_ROOT", "/tmp/waldur-test-media")  # noqa: S108

# Tokens of users whose token_lifetime is None never expire; the others last a day.
WALDUR_CORE["TOKEN_LIFETIME"] = timedelta(days=1)  # noqa: F405

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": env.get("WALDUR_TEST_LOG_LEVEL", "WARNING")},
}
