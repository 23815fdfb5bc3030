# Shared by scripts/up and scripts/test: install what is missing, start a private PostgreSQL
# (wal_level=logical) and a tansu broker, wait until they answer, stop them.
# Sourced, not executed. Works as root on a fresh Debian machine.

TANSU_VERSION=0.6.0

log() { printf '[medflow] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs Debian packages ("$@"), as root; `what` names them in the log and the error.
apt_install() {
  local what=$1; shift
  log "installing $what (Debian: $*)"
  [ "$(id -u)" = 0 ] || die "$what is missing and installing it needs root"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
}

# rust-toolchain.toml pins a channel (e.g. 1.95.0), which rustup would download when it is
# not installed; machines here reach no rustup server. An installed `stable` of that very
# version is the same toolchain: register it under the pinned name (rustup keeps
# toolchains as directories; it refuses `toolchain link` for official names).
ensure_toolchain() {
  local root channel host toolchains stable_version
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$root/rust-toolchain.toml")
  [ -n "$channel" ] || return 0
  command -v rustup >/dev/null || return 0
  rustup toolchain list | grep -q "^$channel-" && return 0
  host=$(rustc +stable -vV | sed -n 's/^host: //p')
  stable_version=$(rustc +stable --version | awk '{print $2}')
  toolchains="${RUSTUP_HOME:-$HOME/.rustup}/toolchains"
  if [ "$stable_version" = "$channel" ] && [ -d "$toolchains/stable-$host" ]; then
    log "serving the pinned Rust $channel from the installed stable toolchain"
    ln -s "$toolchains/stable-$host" "$toolchains/$channel-$host"
  else
    log "rust-toolchain.toml pins $channel, installed stable is $stable_version: rustup will try to install $channel"
  fi
}
ensure_toolchain

# Finds PostgreSQL's server binaries; installs Debian's `postgresql` package if missing.
ensure_postgres() {
  PG_BIN=""
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then PG_BIN=$dir; break; fi
  done
  if [ -z "$PG_BIN" ]; then
    apt_install PostgreSQL postgresql postgresql-contrib
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
      if [ -x "$dir/initdb" ]; then PG_BIN=$dir; break; fi
    done
  fi
  [ -n "$PG_BIN" ] || die "PostgreSQL server binaries not found after install"
  # PostgreSQL refuses to run as root: run it as the `postgres` system user.
  if [ "$(id -u)" = 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
      useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    PG_AS="runuser -u postgres --"
  else
    PG_AS=""
  fi
  export PG_BIN PG_AS
}

# Finds tansu; installs it from crates.io if missing (~8 minutes on 2 cores).
ensure_tansu() {
  if command -v tansu >/dev/null 2>&1; then TANSU=$(command -v tansu)
  elif [ -x "$HOME/.cargo/bin/tansu" ]; then TANSU=$HOME/.cargo/bin/tansu
  else
    log "installing tansu $TANSU_VERSION (cargo install; takes several minutes)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql >&2 \
      || die "cargo install tansu failed"
    TANSU=$HOME/.cargo/bin/tansu
  fi
  export TANSU
}

# Node.js and npm build GraphiQL's bundle (http/build.rs) and run the browser tests;
# installs Debian's `nodejs` and `npm` if missing.
ensure_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && return
  apt_install "Node.js and npm" nodejs npm
}

# What the black-box tests drive: Debian's Chromium (tests/browser, through playwright-core
# from npm), @asyncapi/parser and ajv (tests/asyncapi, from npm) and schemathesis from PyPI (pinned in tests/schemathesis/requirements.txt, in a
# virtualenv under target/). Exports MEDFLOW_TEST_CHROMIUM and MEDFLOW_TEST_SCHEMATHESIS.
ensure_test_tools() {
  ensure_node
  [ -x /usr/bin/chromium ] || apt_install "Chromium (for the browser tests)" chromium
  export MEDFLOW_TEST_CHROMIUM=/usr/bin/chromium
  local project
  for project in tests/browser tests/asyncapi; do
    if ! [ "$project/node_modules/.package-lock.json" -nt "$project/package-lock.json" ]; then
      log "installing the npm packages of $project"
      (cd "$project" && npm ci --ignore-scripts --no-audit --no-fund >&2) || die "npm ci in $project failed"
    fi
  done
  local venv=$PWD/target/schemathesis-venv
  local wanted=tests/schemathesis/requirements.txt
  if ! [ "$venv/.installed" -nt "$wanted" ]; then
    log "installing schemathesis into $venv (PyPI)"
    python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: python3-venv)"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$wanted" >&2 || die "pip install schemathesis failed"
    touch "$venv/.installed"
  fi
  export MEDFLOW_TEST_SCHEMATHESIS=$venv/bin/schemathesis
}

# Prints a TCP port nobody listens on.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null && return
  local port
  while :; do
    port=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# Waits until something accepts TCP connections on 127.0.0.1:$1 (at most $2 seconds).
wait_for_port() {
  local port=$1 deadline=$((SECONDS + ${2:-60}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# start_postgres DATADIR PORT [test]: initialises the cluster if needed and starts it.
# With `test`, durability is traded for speed (fsync off): the data is thrown away anyway.
start_postgres() {
  local data=$1 port=$2 mode=${3:-dev}
  mkdir -p "$data"
  if [ -n "$PG_AS" ]; then chown postgres: "$data"; chmod 700 "$data"; fi
  if [ ! -f "$data/PG_VERSION" ]; then
    $PG_AS "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$data.initdb.log" 2>&1 \
      || { cat "$data.initdb.log" >&2; die "initdb failed"; }
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$data'"
      echo "wal_level = logical"
      # Every test database has an audit sealing slot, and the CDC tests one more each.
      echo "max_replication_slots = 400"
      echo "max_wal_senders = 64"
      echo "max_connections = 500"
      echo "shared_buffers = 256MB"
      if [ "$mode" = test ]; then
        # Durability is not needed, but commits stay synchronous: logical decoding only sees
        # flushed WAL, and an asynchronous commit waits for the WAL writer (up to 600 ms),
        # which would distort every CDC latency.
        echo "fsync = off"
        echo "full_page_writes = off"
        # A finished test's slots stay behind; they must not hold the run's WAL.
        echo "max_slot_wal_keep_size = 2GB"
      fi
    } >>"$data/postgresql.conf"
  fi
  # The port is given on the command line so a reused cluster can move.
  $PG_AS "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -o "-p $port" -w -t 60 start >/dev/null \
    || { tail -20 "$data/server.log" >&2; die "PostgreSQL did not start"; }
  wait_for_port "$port" 30 || die "PostgreSQL does not answer on port $port"
}

stop_postgres() {
  local data=$1
  [ -f "$data/postmaster.pid" ] || return 0
  $PG_AS "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

# start_tansu DIR PORT: starts the broker with sqlite storage under DIR; sets TANSU_PID.
start_tansu() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  # tansu resolves sqlite:// paths against its working directory.
  (cd "$dir" && exec setsid "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "sqlite://tansu.db" >"$dir/broker.log" 2>&1) &
  TANSU_PID=$!
  echo "$TANSU_PID" >"$dir/broker.pid"
  wait_for_port "$port" 60 || { tail -20 "$dir/broker.log" >&2; die "tansu does not answer on port $port"; }
}

stop_tansu() {
  local dir=$1 pid
  [ -f "$dir/broker.pid" ] || return 0
  pid=$(cat "$dir/broker.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/broker.pid"
}

# psql_admin PORT SQL...: runs SQL as the superuser over TCP.
psql_admin() {
  local port=$1; shift
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

# start_private_stack: PostgreSQL and tansu in a temporary directory on free ports, torn down
# when the calling script exits; exports their addresses as MEDFLOW_TEST_* for tests/benches.
# start_private_stack [durable]: with `durable`, PostgreSQL keeps production durability
# (fsync and synchronous commits on) instead of the tests' fsync off.
start_private_stack() {
  local pg_mode=test
  if [ "${1:-}" = durable ]; then pg_mode=dev; fi
  ensure_postgres
  ensure_tansu
  WORK=$(mktemp -d /tmp/medflow-test.XXXXXX)
  chmod 755 "$WORK"
  trap teardown_private_stack EXIT
  trap 'exit 130' INT TERM
  local pg_port kafka_port
  pg_port=$(free_port)
  kafka_port=$(free_port)
  log "PostgreSQL on 127.0.0.1:$pg_port, tansu on 127.0.0.1:$kafka_port (under $WORK)"
  start_postgres "$WORK/pg" "$pg_port" "$pg_mode"
  start_tansu "$WORK/kafka" "$kafka_port"
  export MEDFLOW_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
  export MEDFLOW_TEST_KAFKA_BROKERS="127.0.0.1:$kafka_port"
  export MEDFLOW_TEST_PG_BIN="$PG_BIN"
  export MEDFLOW_TEST_PG_DATA="$WORK/pg"
  # Tests that stop and restart a broker run their own tansu from this binary, under $WORK.
  export MEDFLOW_TEST_TANSU="$TANSU"
  export MEDFLOW_TEST_WORK="$WORK"
}

teardown_private_stack() {
  local status=$?
  stop_tansu "$WORK/kafka"
  stop_postgres "$WORK/pg"
  rm -rf "$WORK"
  exit "$status"
}
