#!/bin/sh
# The entrypoint of the PostgreSQL image made from Debian's packages (inferplane.cluster.images):
# the same environment as the official image's, as the in-cluster ledger database sets it:
# POSTGRES_PASSWORD (required), POSTGRES_USER (the superuser), POSTGRES_DB, PGDATA. It
# initialises an empty data directory once, then runs the server in the foreground. Written for
# a read-only root filesystem: it writes only to PGDATA, the socket directory and /tmp.
set -eu

: "${POSTGRES_PASSWORD:?is not set: the ledger database needs the superuser password}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    # The password reaches initdb through a file that lives for this step only (never argv).
    password_file="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-instructions
    rm -f "$password_file"
    # Clients come from other pods: password (SCRAM) over TCP from any address; the
    # NetworkPolicy, where the CNI enforces it, limits who gets that far.
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$database" != "postgres" ]; then
        # A server on the Unix socket only, for the one statement; stopped before serving.
        pg_ctl --wait --silent -o "-c listen_addresses=''" start
        psql --quiet -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres \
            -c "CREATE DATABASE \"$database\" OWNER \"$user\""
        pg_ctl --wait --silent -m fast stop
    fi
fi

exec postgres -c listen_addresses='*' "$@"
