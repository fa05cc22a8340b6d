#!/usr/bin/env bash
# Make sure the local services the tests talk to are up: PostgreSQL (127.0.0.1:5432),
# Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672). Each is started only if its port does
# not answer. Also makes sure the PostgreSQL database `test` exists. Prints one line per service.
#
# These are the machine's own Debian-packaged services (see the machine notes); this script does
# not install them, it only (re)starts them with the same commands the machine uses at boot.
#
# Environment overrides:
#   SERVICES_HOST    address to probe (default 127.0.0.1)
#   RABBITMQ_WAIT    seconds to wait for RabbitMQ after starting it (default 60)
#   PG_DATABASE      database to ensure exists (default test)
set -euo pipefail

HOST=${SERVICES_HOST:-127.0.0.1}
RABBITMQ_WAIT=${RABBITMQ_WAIT:-60}
PG_DATABASE=${PG_DATABASE:-test}

# port_open PORT: true if something accepts a TCP connection on $HOST:PORT.
port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# wait_port PORT SECONDS: poll until the port answers or the time is up.
wait_port() {
    local port=$1 secs=$2 i
    for ((i = 0; i < secs * 2; i++)); do
        port_open "$port" && return 0
        sleep 0.5
    done
    return 1
}

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "$2: cannot start it: '$1' not found (install the Debian package first)" >&2
        exit 1
    fi
}

failed=0

# --- PostgreSQL -------------------------------------------------------------------------------
if port_open 5432; then
    pg_state="already running"
else
    need pg_ctlcluster postgresql
    pg_version=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start >/dev/null
    if wait_port 5432 30; then pg_state="started"; else pg_state="FAILED to start"; failed=1; fi
fi
db_note=""
if port_open 5432; then
    # Trust auth on loopback: the `postgres` superuser role exists on every Debian cluster.
    psql_cmd=(psql -h "$HOST" -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAX)
    if [[ "$("${psql_cmd[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'")" == "1" ]]; then
        db_note=", database '$PG_DATABASE' present"
    else
        "${psql_cmd[@]}" -c "CREATE DATABASE \"$PG_DATABASE\""
        db_note=", database '$PG_DATABASE' created"
    fi
fi
echo "postgresql ($HOST:5432): $pg_state$db_note"

# --- Redis ------------------------------------------------------------------------------------
if port_open 6379; then
    redis_state="already running"
else
    need redis-server redis
    redis_args=(--daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no)
    # Same place for cwd/log as the machine's own boot command, when those folders exist.
    [[ -d /var/lib/redis && -w /var/lib/redis ]] && redis_args+=(--dir /var/lib/redis)
    [[ -d /var/log/redis && -w /var/log/redis ]] && redis_args+=(--logfile /var/log/redis/ci.log)
    redis-server "${redis_args[@]}" >/dev/null
    if wait_port 6379 15; then redis_state="started"; else redis_state="FAILED to start"; failed=1; fi
fi
echo "redis ($HOST:6379): $redis_state"

# --- RabbitMQ ---------------------------------------------------------------------------------
if port_open 5672; then
    rabbit_state="already running"
else
    need rabbitmq-server rabbitmq
    rabbitmq-server -detached >/dev/null 2>&1 || true  # it may warn about -detached; the port decides
    if wait_port 5672 "$RABBITMQ_WAIT"; then
        rabbit_state="started"
    else
        rabbit_state="FAILED to answer within ${RABBITMQ_WAIT}s"
        failed=1
    fi
fi
echo "rabbitmq ($HOST:5672): $rabbit_state"

exit "$failed"
