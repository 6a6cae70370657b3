#!/usr/bin/env bash
# Starts each local service the test suite forwards to (NATS with JetStream, RabbitMQ, Redis) or
# stores in (PostgreSQL, for the store's PostgreSQL backend) when it is down, with the same commands
# as the machine's own setup, and waits until it accepts connections. The Pub/Sub emulator is not
# started here: the tests start their own.
# Prints what it did; exits non-zero if a service stays down.
set -uo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
    local name=$1 port=$2
    for _ in $(seq 1 120); do
        if listening "$port"; then
            echo "services: $name is up on 127.0.0.1:$port" >&2
            return 0
        fi
        sleep 0.5
    done
    echo "services: $name did not come up on 127.0.0.1:$port" >&2
    return 1
}

failed=0
if ! listening 4222; then
    echo "services: starting NATS (JetStream)" >&2
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_for NATS 4222 || failed=1
fi
if ! listening 6379; then
    echo "services: starting Redis" >&2
    redis-server --daemonize yes --port 6379 --save "" >/dev/null
    wait_for Redis 6379 || failed=1
fi
if ! listening 5672; then
    echo "services: starting RabbitMQ" >&2
    rabbitmq-server -detached >/dev/null 2>&1
    wait_for RabbitMQ 5672 || failed=1
fi
if ! listening 5432; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    wait_for PostgreSQL 5432 || failed=1
fi
exit "$failed"
