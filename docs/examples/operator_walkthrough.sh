#!/usr/bin/env bash
# The operator walk-through of docs/operators.md, end to end on one machine (loopback): TLS,
# SuperNode authentication, two users' stores (one consents, one does not), a checked
# submission, results in the run directory. tests/test_deployment.py runs this very script.
#
#   bash docs/examples/operator_walkthrough.sh [WORK_DIR]
#
# Needs the project installed (make setup; . .venv/bin/activate). Every server binds to
# 127.0.0.1; every process started is stopped on exit, by its process group.
set -euo pipefail

APP="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -n "${1:-}" ]; then mkdir -p "$1"; WORK="$(cd "$1" && pwd)"; else WORK="$(mktemp -d)"; fi
PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
start() {  # start NAME COMMAND...: in its own process group, log in $WORK/NAME.log
  local name="$1"; shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
}
wait_for_port() {
  python - "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0:
            sys.exit(0)
    time.sleep(0.2)
sys.exit("nothing listens on 127.0.0.1:" + sys.argv[1])
PY
}

# 1. Certificates for the SuperLink and a key per SuperNode.
fedrec certs "$WORK/keys" --node alice --node bob

# 2. The connection the flwr CLI uses (FLWR_HOME must exist before config.toml is written).
export FLWR_HOME="$WORK/flwr_home"
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "loopback"

[superlink.loopback]
address = "127.0.0.1:$PORT"
root-certificates = "$WORK/keys/ca.crt"
TOML

# 3. The SuperLink, with TLS and node authentication.
start superlink flower-superlink --disable-runtime-dependency-installation \
  --enable-supernode-auth --ssl-ca-certfile "$WORK/keys/ca.crt" \
  --ssl-certfile "$WORK/keys/server.pem" --ssl-keyfile "$WORK/keys/server.key" \
  --host 127.0.0.1 --port "$PORT"
wait_for_port "$PORT"

# 4. Each user's store: alice's own log and her consent; bob never opted in.
python - "$WORK/alice.csv" <<'PY'
import sys
with open(sys.argv[1], "w") as out:
    out.write("item,timestamp,rating,category\n")
    for i in range(12):
        category = ("view", "rating", "purchase")[i % 3]
        out.write(f"{i},{1_600_000_000 + i},{4.0 if category == 'rating' else ''},{category}\n")
PY
fedrec store create "$WORK/alice.sqlite" --num-items 400 --interactions "$WORK/alice.csv" \
  --consent view,rating,purchase
fedrec store create "$WORK/bob.sqlite" --num-items 400

# 5. Register each SuperNode's key, then start it on its user's store.
for node in alice bob; do
  flwr supernode register "$WORK/keys/$node.pub" loopback
  start "supernode-$node" flower-supernode --superlink "127.0.0.1:$PORT" \
    --root-certificates "$WORK/keys/ca.crt" --auth-supernode-private-key "$WORK/keys/$node" \
    --host 127.0.0.1 --port "$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
    --node-config "store=\"$WORK/$node.sqlite\" holdout-latest=1"
done

# 6. Submit: the overrides are checked here first; the exit status is the run's outcome.
fedrec submit --app "$APP" --superlink loopback --run-dir "$WORK/run" --timeout-s 300 \
  privacy=record federation.num_clients=2 federation.clients_per_round=2 federation.rounds=1 \
  model.embedding_dim=8 federation.local.batch_size=4

# 7. The results, and what each device kept.
test -s "$WORK/run/metrics.csv" && test -s "$WORK/run/summary.json"
fedrec store show "$WORK/alice.sqlite"
echo "walk-through done: $WORK"
