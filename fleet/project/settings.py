"""Settings for the fleet control panel, chosen by environment variables alone.

Two modes:

* Embedded default (nothing set): a SQLite file under ``var/``, the in-memory channel
  layer, Celery tasks run eagerly in-process. Runs with nothing but Python installed.
* Production (``FLEET_ENV=production``): ``DATABASE_URL`` (PostgreSQL through psycopg 3)
  and ``REDIS_URL`` (channels-redis layer and Celery broker) are required, as are a real
  ``SECRET_KEY`` and ``ALLOWED_HOSTS``; cookies are secure and DEBUG is off.

``DATABASE_URL`` and ``REDIS_URL`` also work on their own, outside production mode, so the
test suite can run the same code against PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parents[2]

DEFAULT_SECRET_KEY = "embedded-default-insecure-key-do-not-use-in-production"


def envbool(name: str, default: str = "") -> bool:
    return os.environ.get(name, default).strip().lower() in {"1", "true", "yes", "on"}


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def envfloat(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


FLEET_ENV = os.environ.get("FLEET_ENV", "embedded").strip().lower()
if FLEET_ENV not in {"embedded", "production"}:
    raise ImproperlyConfigured(f"FLEET_ENV must be 'embedded' or 'production', not {FLEET_ENV!r}")
PRODUCTION = FLEET_ENV == "production"

DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
REDIS_URL = os.environ.get("REDIS_URL", "").strip()
SECRET_KEY = os.environ.get("SECRET_KEY", "").strip() or DEFAULT_SECRET_KEY

if PRODUCTION:
    missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name)]
    if missing:
        raise ImproperlyConfigured(f"production mode needs {', '.join(missing)}")
    if SECRET_KEY == DEFAULT_SECRET_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured(
            "production mode refuses the default SECRET_KEY: set SECRET_KEY to a random "
            "string of at least 32 characters"
        )
    if not envlist("ALLOWED_HOSTS"):
        raise ImproperlyConfigured("production mode needs ALLOWED_HOSTS (comma-separated)")

DEBUG = envbool("DEBUG", "0" if PRODUCTION else "1")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_celery_beat",
    "axes",
    "fleet",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "fleet.project.middleware.ContentSecurityPolicyMiddleware",
    # Static files (the admin's, the dashboard's script) from the app server itself, in every
    # mode: ASGI (make run, daphne), WSGI (gunicorn) and runserver alike. Production serves the
    # files `manage.py collectstatic` put in STATIC_ROOT; with DEBUG on it also finds them in
    # the apps, so a change shows without collecting again.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out client's sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# WhiteNoise hands Django a file as a synchronous iterator; under ASGI Django reads it on a
# worker thread and warns about each file it serves that way. Static files are small.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

ROOT_URLCONF = "fleet.project.urls"
ASGI_APPLICATION = "fleet.project.asgi.application"
WSGI_APPLICATION = "fleet.project.wsgi.application"

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
                "dashboard.context_processors.simulated_fleet",
            ],
        },
    },
]

VAR_DIR = Path(os.environ.get("FLEET_VAR_DIR", BASE_DIR / "var"))
# Where hosts reach the panel, for install commands; empty: the URL of the request.
PANEL_URL = os.environ.get("PANEL_URL", "").strip()
# Wheels of the agent's dependencies, served to hosts that reach no package index.
AGENT_WHEELHOUSE = Path(os.environ.get("AGENT_WHEELHOUSE", VAR_DIR / "wheelhouse"))
# Behind a reverse proxy, the header it puts the agent's address in (e.g. X-Forwarded-For; its
# last entry counts). Empty: the connection's own peer address, as no client can forge it.
AGENT_ADDRESS_HEADER = os.environ.get("AGENT_ADDRESS_HEADER", "").strip()
# Report requests one node's token may make per minute; beyond it a 429 with Retry-After, nothing
# stored. An agent posts every 5 s (12 a minute), a whole buffer in one request after an outage,
# every 0.5 s while an instance of its host is on its way to serving (the panel asks it to, at
# most half of this bound: ``ingest.settling_report_s``) and at once when its long poll says
# its desired state changed.
AGENT_REPORTS_PER_MINUTE = envint("AGENT_REPORTS_PER_MINUTE", 240)
if AGENT_REPORTS_PER_MINUTE < 1:
    raise ImproperlyConfigured(f"AGENT_REPORTS_PER_MINUTE must be at least 1, not {AGENT_REPORTS_PER_MINUTE}")
# How long a new join token lets hosts register, wherever it is made, unless its maker says otherwise.
JOIN_TOKEN_DEFAULT_TTL_HOURS = envint("JOIN_TOKEN_DEFAULT_TTL_HOURS", 24)
if JOIN_TOKEN_DEFAULT_TTL_HOURS < 1:
    raise ImproperlyConfigured(f"JOIN_TOKEN_DEFAULT_TTL_HOURS must be at least 1, not {JOIN_TOKEN_DEFAULT_TTL_HOURS}")

if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "fleet.sqlite3"),
            # WAL lets the dashboard read while ingest writes. IMMEDIATE transactions take the
            # write lock up front, so concurrent writers (ingest, the gateway's request log, the
            # scheduler) wait for each other instead of failing with "database is locked" when a
            # read transaction cannot be upgraded.
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # The layer's receive blocks on Redis in rounds of 5 s; a client socket timeout of the
            # same 5 s (redis-py's default) can fire as an empty round ends, failing a receive that
            # had nothing to fail on (an agent's long poll, a dashboard socket).
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}], "prefix": "gpufleet"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Counters every panel process must share (each node's report rate, AGENT_REPORTS_PER_MINUTE):
# Redis where there is one; otherwise this process's memory, which bounds each process alone.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "gpufleet",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Beat reads its schedule from the database (django-celery-beat); with Redis, behind a lock so only
# one of any number of beats sends (fleet/project/beat.py): a waiting beat takes over within
# BEAT_LOCK_TTL_S of the holder's death and tries the lock every BEAT_LOCK_RETRY_S.
CELERY_BEAT_SCHEDULER = (
    "fleet.project.beat:SingleBeatScheduler" if REDIS_URL else "django_celery_beat.schedulers:DatabaseScheduler"
)
BEAT_LOCK_TTL_S = envfloat("BEAT_LOCK_TTL_S", 30.0)
BEAT_LOCK_RETRY_S = envfloat("BEAT_LOCK_RETRY_S", 2.0)
if BEAT_LOCK_TTL_S < 3 or BEAT_LOCK_RETRY_S <= 0:
    raise ImproperlyConfigured(
        "BEAT_LOCK_TTL_S must be at least 3 and BEAT_LOCK_RETRY_S above 0, "
        f"not {BEAT_LOCK_TTL_S} and {BEAT_LOCK_RETRY_S}"
    )
CELERY_TIMEZONE = "UTC"

# Spend. Every figure is in one currency; price rates in other currencies are not converted
# (the panel holds no exchange rates) and are ignored. Calendar periods (month to date,
# budgets, price dates) are days of the billing time zone.
FLEET_BILLING_CURRENCY = os.environ.get("FLEET_BILLING_CURRENCY", "USD").strip().upper()
FLEET_BILLING_TIMEZONE = os.environ.get("FLEET_BILLING_TIMEZONE", "UTC").strip()
try:
    ZoneInfo(FLEET_BILLING_TIMEZONE)
except (ZoneInfoNotFoundError, ValueError) as exc:
    raise ImproperlyConfigured(f"FLEET_BILLING_TIMEZONE {FLEET_BILLING_TIMEZONE!r} is not an IANA time zone") from exc
# Whether a sleeping instance (vLLM sleep mode: weights and KV cache freed) still holds its
# GPU for allocation. Yes by default: the instance keeps the card for scheduling and wakes
# on it in about a second, so nothing else is placed there and the card is still paid for.
FLEET_COST_SLEEPING_HOLDS_GPU = envbool("FLEET_COST_SLEEPING_HOLDS_GPU", "1")
# Samples further apart than this mark a gap: the GPU was not up, a rate is not extrapolated.
FLEET_COST_SAMPLE_GAP_S = envint("FLEET_COST_SAMPLE_GAP_S", 60)
# Spend reads minute rollups for this many recent hours, hour rollups before (fleet.costs.selectors.Tiers).
FLEET_COST_MINUTE_DETAIL_HOURS = envint("FLEET_COST_MINUTE_DETAIL_HOURS", 24)
# Dotted path of the callable that gives team usage per pool (see fleet.costs.teams).
FLEET_TEAM_USAGE_SOURCE = os.environ.get("FLEET_TEAM_USAGE_SOURCE", "fleet.costs.teams.request_log_usage").strip()
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "gpufleet@localhost")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
# The gateway (fleet.gateway): how long and how many requests it holds while a pool wakes
# from zero, how long a failing instance sits out, how often it re-reads the routing table.
GATEWAY_HOLD_TIMEOUT_S = envfloat("GATEWAY_HOLD_TIMEOUT_S", 60.0)
GATEWAY_MAX_HELD = envint("GATEWAY_MAX_HELD", 256)
GATEWAY_COOLDOWN_S = envfloat("GATEWAY_COOLDOWN_S", 15.0)
GATEWAY_REFRESH_S = envfloat("GATEWAY_REFRESH_S", 1.0)
GATEWAY_WAKE_RETRY_S = envfloat("GATEWAY_WAKE_RETRY_S", 30.0)
GATEWAY_CONNECT_TIMEOUT_S = envfloat("GATEWAY_CONNECT_TIMEOUT_S", 3.0)
GATEWAY_UPSTREAM_TIMEOUT_S = envfloat("GATEWAY_UPSTREAM_TIMEOUT_S", 600.0)
GATEWAY_MAX_BODY_BYTES = envint("GATEWAY_MAX_BODY_BYTES", 8 * 1024 * 1024)
# What the gateway takes from an upstream: a response's whole time and size (it is not trusted).
GATEWAY_UPSTREAM_RESPONSE_TIMEOUT_S = envfloat("GATEWAY_UPSTREAM_RESPONSE_TIMEOUT_S", 1800.0)
GATEWAY_UPSTREAM_MAX_BODY_BYTES = envint("GATEWAY_UPSTREAM_MAX_BODY_BYTES", 64 * 1024 * 1024)
GATEWAY_LOG_FLUSH_S = envfloat("GATEWAY_LOG_FLUSH_S", 0.25)
# How long Python lets one thread hold the interpreter before another may take it (default
# 5 ms). The gateway's database thread (routing refresh, request log) would stall requests
# for that long; 0.5 ms keeps its p99 near the p50. 0 leaves Python's default.
GATEWAY_SWITCH_INTERVAL_S = envfloat("GATEWAY_SWITCH_INTERVAL_S", 0.0005)
GATEWAY_LOG_MAX_PENDING = envint("GATEWAY_LOG_MAX_PENDING", 50_000)
# A dedicated gateway (python -m fleet.gateway) does its database work (routing refresh,
# request log, wake-ups) in a worker process, out of the way of its event loop; 0 keeps it
# on a thread of the serving process, as the panel's own /v1/ mount always does.
GATEWAY_DB_PROCESS = envbool("GATEWAY_DB_PROCESS", "1")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "admin:login"
# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT failed sign-ins from one client
# address (through TRUSTED_PROXIES, fleet/project/client_address.py) that address may not sign in,
# with any password, for LOGIN_COOLOFF_MINUTES; a successful sign-in clears its count.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_CLIENT_IP_CALLABLE = "fleet.project.client_address.client_address_text"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
LOGIN_REDIRECT_URL = "dashboard:index"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Where `manage.py collectstatic` puts the files the app serves (WhiteNoise); one folder per release.
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", "").strip() or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Production: browsers keep to HTTPS for a year once they have seen the panel over it, and
# pages run only the panel's own scripts (fleet/project/middleware.py). Plotly sets inline styles.
CONTENT_SECURITY_POLICY = os.environ.get(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
    if PRODUCTION
    else "",
).strip()
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 365 * 24 * 3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "filters": {"template_lookup_hidden": {"()": "fleet.project.logs.TemplateLookupHidden"}},
    "loggers": {"django.template": {"filters": ["template_lookup_hidden"]}},
}

# Telemetry: how long raw samples and rollups are kept (enforced by the prune task), and
# how often the coalesced fleet summary may go to browsers.
TELEMETRY_RAW_RETENTION_HOURS = envint("TELEMETRY_RAW_RETENTION_HOURS", 48)
TELEMETRY_MINUTE_RETENTION_DAYS = envint("TELEMETRY_MINUTE_RETENTION_DAYS", 30)
TELEMETRY_HOUR_RETENTION_DAYS = envint("TELEMETRY_HOUR_RETENTION_DAYS", 400)
FLEET_SUMMARY_INTERVAL_S = float(os.environ.get("FLEET_SUMMARY_INTERVAL_S", "1.0"))
# How stale a live socket's view of its session may get: it is read again before a send and on
# a timer at most this often, and a socket whose session ended is closed (dashboard/consumers.py).
FLEET_SOCKET_SESSION_CHECK_S = envfloat("FLEET_SOCKET_SESSION_CHECK_S", 1.0)

# /metrics: a bearer token, or (without one) client addresses allowed; loopback by default.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "").strip()
METRICS_ALLOWED_IPS = envlist("METRICS_ALLOWED_IPS", "127.0.0.1,::1")
# Reverse proxies (addresses or networks) whose X-Forwarded-For is believed, for /metrics and
# login throttling (fleet/project/client_address.py); empty: the connection's peer is the client.
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES")

# The in-process scheduler runs the periodic tasks where there is no Celery beat (the
# embedded default). Off where Redis is set: there beat and workers run them.
FLEET_INPROCESS_SCHEDULER = envbool("FLEET_INPROCESS_SCHEDULER", "0" if REDIS_URL else "1")
