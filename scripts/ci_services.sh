#!/usr/bin/env bash
# Installs and starts the services the `pladis study` tests use: PostgreSQL (Debian's `postgresql`) and a headless
# browser (Debian's `chromium` + `chromium-driver`). Idempotent; run as root (or with passwordless sudo) on Debian.
# Where something cannot be installed or started this script says so and exits 0: the tests that need it skip
# with a clear reason instead of failing.
#
# The tests find PostgreSQL through PLADIS_STUDY_PG_URL (default below), the browser at /usr/bin/chromium and
# /usr/bin/chromedriver (override with PLADIS_STUDY_CHROMIUM / PLADIS_STUDY_CHROMEDRIVER).
set -uo pipefail

PG_USER="${PLADIS_STUDY_PG_USER:-pladis}"
PG_PASSWORD="${PLADIS_STUDY_PG_PASSWORD:-pladis}"
PG_DB="${PLADIS_STUDY_PG_DB:-pladis_study}"

note() { echo "ci_services: $*"; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    note "not root and no passwordless sudo: cannot install services; study tests needing them will skip"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    note "no apt-get (not Debian?): cannot install services; study tests needing them will skip"
    exit 0
fi

# 1. Packages (skip apt entirely when everything is present already).
missing=()
for pkg in postgresql chromium chromium-driver; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    note "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q || note "apt-get update failed"
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" || note "apt-get install ${missing[*]} failed"
else
    note "postgresql, chromium, chromium-driver already installed"
fi

# 2. PostgreSQL: make sure a cluster exists and runs, then a login role and a database for the tests.
if command -v pg_lsclusters >/dev/null 2>&1; then
    version="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$version" ]; then
        if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
            note "creating PostgreSQL $version cluster 'main'"
            $SUDO pg_createcluster "$version" main || note "pg_createcluster failed"
        fi
        if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version \+main .* online"; then
            note "starting PostgreSQL $version/main"
            $SUDO pg_ctlcluster "$version" main start || note "could not start PostgreSQL; PostgreSQL tests will skip"
        fi
        # Wait (bounded) until it accepts connections.
        for _ in $(seq 1 30); do
            $SUDO -u postgres psql -qtAc "select 1" >/dev/null 2>&1 && break
            [ -z "$SUDO" ] && runuser -u postgres -- psql -qtAc "select 1" >/dev/null 2>&1 && break
            sleep 1
        done
        as_postgres() {
            if [ -z "$SUDO" ]; then runuser -u postgres -- "$@"; else $SUDO -u postgres "$@"; fi
        }
        if as_postgres psql -qtAc "select 1" >/dev/null 2>&1; then
            if [ "$(as_postgres psql -qtAc "select 1 from pg_roles where rolname='$PG_USER'")" != "1" ]; then
                as_postgres psql -qc "create role $PG_USER login password '$PG_PASSWORD'"
            fi
            if [ "$(as_postgres psql -qtAc "select 1 from pg_database where datname='$PG_DB'")" != "1" ]; then
                as_postgres createdb -O "$PG_USER" "$PG_DB"
            fi
            note "PostgreSQL ready: postgresql+psycopg://$PG_USER:***@127.0.0.1:5432/$PG_DB"
        else
            note "PostgreSQL does not answer; PostgreSQL tests will skip"
        fi
    fi
else
    note "PostgreSQL tools missing; PostgreSQL tests will skip"
fi

# 3. Browser: only report; the tests start chromium themselves through chromedriver.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    note "browser ready: $(chromium --version 2>/dev/null | head -n 1), $(chromedriver --version 2>/dev/null | head -n 1)"
else
    note "chromium or chromedriver missing; browser tests will skip"
fi
exit 0
