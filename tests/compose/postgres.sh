#!/bin/sh
# Postgres from Debian's package, set up the way the official image's
# entrypoint would for compose/docker-compose.yml: user capstan, the
# capstan_meta database, then compose/postgres-init.sql.
set -e
PG=$(ls -d /usr/lib/postgresql/*/bin | head -n1)
DATA=/var/lib/postgresql/data
mkdir -p "$DATA" /run/postgresql
chown -R postgres "$DATA" /run/postgresql
if [ ! -s "$DATA/PG_VERSION" ]; then
    su postgres -c "$PG/initdb -D $DATA -A trust -U postgres" >/dev/null
    echo "listen_addresses = '*'" >>"$DATA/postgresql.conf"
    echo "host all all 0.0.0.0/0 trust" >>"$DATA/pg_hba.conf"
    su postgres -c "$PG/pg_ctl -D $DATA -w start -o '-c listen_addresses='" >/dev/null
    su postgres -c "psql -q -c \"CREATE USER capstan PASSWORD 'capstan'\" -c 'CREATE DATABASE capstan_meta OWNER capstan'"
    su postgres -c "psql -q -f /docker-entrypoint-initdb.d/capstan.sql"
    su postgres -c "$PG/pg_ctl -D $DATA -w stop" >/dev/null
fi
exec su postgres -c "exec $PG/postgres -D $DATA"
