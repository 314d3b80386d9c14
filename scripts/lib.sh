# Shared by scripts/corpus_check, scripts/e2e and scripts/schemathesis (sourced,
# not run): start the service on a MariaDB database and a Redis key prefix of
# its own, wait until it answers, and clean both up on exit.

# start_service NAME BINARY PORT
# Exports DATABASE_URL (database chat_NAME_PID on TEST_MYSQL_URL, default the
# `chat` user), REDIS_KEY_PREFIX (NAME:PID:) and BIND_ADDR (127.0.0.1:PORT),
# unsets MEILI_URL, starts `BINARY serve` with its log in target/NAME-serve.log,
# sets SERVICE_PID, and calls stop_service on exit. Other settings come from
# the caller's environment.
start_service() {
  local name=$1 binary=$2 port=$3
  SERVICE_DB="chat_${name}_$$"
  SERVICE_PREFIX="${name}:$$:"
  SERVICE_LOG="target/${name}-serve.log"
  export DATABASE_URL="${TEST_MYSQL_URL:-mysql://chat:chat@127.0.0.1:3306}/$SERVICE_DB"
  export REDIS_KEY_PREFIX="$SERVICE_PREFIX" BIND_ADDR="127.0.0.1:$port"
  unset MEILI_URL
  "$binary" serve > "$SERVICE_LOG" 2>&1 &
  SERVICE_PID=$!
  trap stop_service EXIT
}

# stop_service: kills the service (if still running), drops its database and
# deletes its Redis keys (every shard's: they all start with the prefix).
stop_service() {
  kill "$SERVICE_PID" 2>/dev/null || true
  mariadb --protocol=tcp -h127.0.0.1 -uchat -pchat -e "DROP DATABASE IF EXISTS \`$SERVICE_DB\`" 2>/dev/null || true
  redis-cli --scan --pattern "${SERVICE_PREFIX}*" | xargs -r -d '\n' redis-cli del >/dev/null || true
}

# wait_http URL: waits up to 10 s for URL to answer 2xx.
wait_http() {
  for _ in $(seq 1 50); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "no answer from $1" >&2
  return 1
}
