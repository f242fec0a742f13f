#!/usr/bin/env bash
# Fuzzes the JSON API against its own OpenAPI document with schemathesis: builds modalbench,
# serves it on a free loopback port over a temporary data dir (the built-in models linked in),
# seeds it with a finished native run, an external run with metric points and a study, then
# runs `schemathesis run <server>/api/v1/openapi.json` and prints how many cases it tried.
#
# Not part of `make test` or CI (it takes minutes): `make fuzz`, or
#   bash scripts/fuzz.sh [extra schemathesis options, e.g. --seed 1 --max-examples 50]
# Environment: FUZZ_MAX_EXAMPLES (default 30 per operation and phase), FUZZ_MAX_TIME
# (seconds, default 600), FUZZ_CHECKS (default: those scripts/schemathesis.toml enables),
# FUZZ_PROFILE (`debug`, default, or `release`), FUZZ_KEEP=1 to keep the data dir and reports.
#
# schemathesis is installed, pinned, into its own venv under ~/.cache/modalbench (not the
# PyTorch .venv). The run's reports (JUnit, NDJSON events) land in the printed folder.
set -euo pipefail

cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/modalbench"
VENV="$CACHE/venv-schemathesis-$SCHEMATHESIS_VERSION"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-30}"
MAX_TIME="${FUZZ_MAX_TIME:-600}"
PROFILE="${FUZZ_PROFILE:-debug}"
# the checks are chosen in scripts/schemathesis.toml; FUZZ_CHECKS (comma-separated) overrides
CHECKS_ARGS=()
[ -n "${FUZZ_CHECKS:-}" ] && CHECKS_ARGS=(--checks "$FUZZ_CHECKS")

say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }

# --- schemathesis ---------------------------------------------------------------------------
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  say "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- the service ----------------------------------------------------------------------------
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/modalbench-fuzz.XXXXXX")"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
if [ "$PROFILE" = release ]; then cargo build --release; else cargo build; fi
# a copy: another checkout building into a shared CARGO_TARGET_DIR may replace the original
BIN="$WORK/modalbench"
cp "$CARGO_TARGET_DIR/$PROFILE/modalbench" "$BIN"
mkdir -p "$WORK/models"
# the models are linked, not shared: registering a checkpoint as a model writes into this
# folder, never into ./models
for m in models/*/; do
  ln -s "$(readlink -f "$m")" "$WORK/models/$(basename "$m")"
done
PORT="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
"$BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$WORK/data" --models-dir "$WORK/models" \
  --cpu-slots 1 >"$WORK/serve.log" 2>&1 &
SERVER=$!

say "starting modalbench on $BASE (log: $WORK/serve.log)"
for _ in $(seq 1 120); do
  curl -sf "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/serve.log"; echo "fuzz: the server died" >&2; exit 1; }
  sleep 1
done
curl -sf "$BASE/readyz" >/dev/null || { echo "fuzz: the server is not ready" >&2; exit 1; }
curl -sf "$BASE/api/v1/openapi.json" >/dev/null \
  || { echo "fuzz: the server has no /api/v1/openapi.json (a binary of another checkout?)" >&2; exit 1; }

# --- seed data: something for the read endpoints to find --------------------------------------
post() { curl -sf -X POST -H 'content-type: application/json' -d "$2" "$BASE/api/v1$1"; }
json() { "$VENV/bin/python" -c "import json, sys; print(json.load(sys.stdin)$1)"; }
say "seeding: a native run (trained to the end), an external run, a study"
RUN=$(post /runs '{"model": "bert-tiny", "dataset": "demo-news", "epochs": 1, "max_steps": 4, "eval_every": 2}' | json '["id"]')
EXT=$(post /runs/external '{"experiment": "fuzz", "name": "seed", "model": "elsewhere", "dataset": "demo-news", "params": {"lr": "0.1"}}' | json '["id"]')
post "/runs/$EXT/metrics" '{"points": [{"key": "eval/accuracy", "value": 0.5, "step": 1}, {"key": "test/accuracy", "value": 0.75}]}' >/dev/null
post /studies '{"name": "fuzz", "models": ["bert-tiny"], "datasets": ["demo-news"], "base": {"epochs": 1, "max_steps": 2}}' >/dev/null
for _ in $(seq 1 300); do
  STATUS=$(curl -sf "$BASE/api/v1/runs/$RUN" | json '["status"]')
  case "$STATUS" in succeeded|failed|cancelled) break ;; esac
  sleep 1
done
say "native run $RUN: $STATUS; external run $EXT"

# --- schemathesis ---------------------------------------------------------------------------
REPORT="$WORK/report"
mkdir -p "$REPORT"
say "schemathesis run $BASE/api/v1/openapi.json (checks: ${FUZZ_CHECKS:-see scripts/schemathesis.toml}; at most $MAX_EXAMPLES cases per operation and phase, ${MAX_TIME}s)"
set +e
# the event streams are left out: they stay open for as long as the client listens
# run from the data dir: schemathesis keeps a cache (`.schemathesis/`) where it runs
CONFIG="$PWD/scripts/schemathesis.toml"
(cd "$WORK" && "$VENV/bin/schemathesis" --no-color --config-file "$CONFIG" \
  run "$BASE/api/v1/openapi.json" \
  "${CHECKS_ARGS[@]}" \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --request-timeout 20 \
  --exclude-operation-id follow_run --exclude-operation-id follow_study \
  --report junit,ndjson --report-dir "$REPORT" \
  "$@")
rc=$?
set -e
"$VENV/bin/python" - "$REPORT" <<'PY'
import glob, json, sys
cases = 0
for path in glob.glob(sys.argv[1] + "/*.ndjson"):
    for line in open(path):
        event = json.loads(line)
        for kind, body in event.items():
            if kind == "ScenarioFinished":
                cases += len(body.get("recorder", {}).get("cases", {}))
print(f"[fuzz] test cases generated and sent: {cases}")
PY
[ "${FUZZ_KEEP:-0}" = 1 ] && say "reports in $REPORT"
exit $rc
