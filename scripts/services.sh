#!/usr/bin/env bash
# Makes sure MariaDB and Redis answer on loopback, installing them from
# Debian's packages and starting them when absent, and that the `chat`
# database user exists. Idempotent; needs root (or sudo) only when it has
# something to install or start. Sourced by scripts/run and scripts/test.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "$name did not come up" >&2
  return 1
}

ensure_mariadb() {
  if ! command -v mariadb >/dev/null 2>&1; then
    echo "installing MariaDB (Debian package mariadb-server)…"
    apt_install mariadb-server mariadb-client
  fi
  if ! mariadb-admin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1 \
     && ! mariadb-admin ping >/dev/null 2>&1; then
    echo "starting MariaDB…"
    $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
    $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    wait_for MariaDB mariadb-admin ping
  fi
  # A dedicated account (Debian's root logs in through the socket only).
  if ! mariadb --protocol=tcp -h127.0.0.1 -uchat -pchat -e 'SELECT 1' >/dev/null 2>&1; then
    $SUDO mariadb -e "CREATE USER IF NOT EXISTS 'chat'@'127.0.0.1' IDENTIFIED BY 'chat';
      CREATE USER IF NOT EXISTS 'chat'@'localhost' IDENTIFIED BY 'chat';
      GRANT ALL PRIVILEGES ON \`chat%\`.* TO 'chat'@'127.0.0.1';
      GRANT ALL PRIVILEGES ON \`chat%\`.* TO 'chat'@'localhost';"
  fi
  # The search index's postings are inserted in key order per chat, which
  # is random over the table: with MariaDB's default 128 MiB buffer pool
  # they go to disk once the index outgrows it (about a million messages).
  # 1 GiB here (dynamic since MariaDB 10.2; production sizes it to its RAM,
  # docs/search.md). Best effort: a server we may not configure keeps its own.
  $SUDO mariadb -e "SET GLOBAL innodb_buffer_pool_size = GREATEST(@@innodb_buffer_pool_size, 1073741824)" \
    >/dev/null 2>&1 || true
  # And a 1 GiB redo log (dynamic since MariaDB 10.9): with the default
  # 96 MiB, indexing stored messages filled it within seconds and every
  # INSERT of postings waited for a checkpoint (86% of the pool dirty, a
  # 4,000-row INSERT 10 to 49 s, about 100 messages/s at 800,000 indexed);
  # with 1 GiB, 7,700 messages/s over the first million (BENCHMARKS.md).
  $SUDO mariadb -e "SET GLOBAL innodb_log_file_size = GREATEST(@@innodb_log_file_size, 1073741824)" \
    >/dev/null 2>&1 || true
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing Redis (Debian package redis-server)…"
    apt_install redis-server redis-tools
  fi
  if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    echo "starting Redis with AOF persistence…"
    $SUDO mkdir -p /var/lib/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 \
      --appendonly yes --appendfsync everysec --dir /var/lib/redis \
      --maxmemory-policy noeviction
    wait_for Redis redis-cli -h 127.0.0.1 ping
  fi
}

ensure_mariadb
ensure_redis
