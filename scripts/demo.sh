#!/usr/bin/env bash
# The demo behind `make demo`: starts a host on a free port, creates the example report agent
# (or updates the one an earlier demo made to the example's definition), runs it while printing
# its timeline, downloads the run's artifacts and shows the start of its report. Expects
# `make setup` and the base image (`make base-image`) to be done.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
data_dir=${DATA_DIR:-$root/.paddock}
paddock="$root/bin/paddock"
node="$root/.tools/node/bin/node"
agent_file="$root/examples/report-agent/agent.json"
agent_name=report-demo

say() { printf '\n==> %s\n' "$*"; }

mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
log="$data_dir/host.log"
port=$("$node" -e '
  const server = require("node:net").createServer();
  server.listen(0, "127.0.0.1", () => { console.log(server.address().port); server.close(); });
')
export PADDOCK_URL="http://127.0.0.1:$port" PADDOCK_DATA_DIR="$data_dir"
# The demo talks to its own host with that host's admin key (from $data_dir/admin.key).
unset PADDOCK_API_KEY

host_pid=
run_out=$(mktemp)
cleanup() {
  rm -f "$run_out"
  if [ -n "$host_pid" ] && kill -0 "$host_pid" 2>/dev/null; then
    kill -TERM "$host_pid" 2>/dev/null || true
    wait "$host_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting the host on $PADDOCK_URL (data: $data_dir, log: $log)"
printf '\n=== demo %s ===\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$log"
"$paddock" serve --data-dir "$data_dir" --port "$port" >>"$log" 2>&1 &
host_pid=$!
until "$paddock" health --wait 1 >/dev/null 2>&1; do
  if ! kill -0 "$host_pid" 2>/dev/null; then
    echo "demo: the host exited during startup; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
done
echo "host is up; admin API key in $data_dir/admin.key"

existing=$("$paddock" agents list --name "$agent_name" --json)
if [ "$existing" != "[]" ]; then
  # An earlier demo's agent gets the example's current definition (a new version only if it changed).
  say "updating agent $agent_name to ${agent_file#"$root"/}"
  "$paddock" agents update "$agent_name" --file "$agent_file"
else
  say "creating agent $agent_name from ${agent_file#"$root"/}"
  "$paddock" agents create --file "$agent_file"
fi

say "running $agent_name"
set +e
"$paddock" run "$agent_name" --follow | tee "$run_out"
status=${PIPESTATUS[0]}
set -e
run_id=$(sed -n '1s/^run \([^ ]*\) .*/\1/p' "$run_out")
if [ -z "$run_id" ]; then
  echo "demo: the run did not start" >&2
  exit 1
fi

out_dir="$data_dir/demo-output/$run_id"
say "downloading the artifacts of $run_id"
"$paddock" artifacts "$run_id" --download "$out_dir"

if [ "$status" -ne 0 ]; then
  echo "demo: run $run_id did not succeed; its events: bin/paddock logs $run_id (with a host running)" >&2
  exit 1
fi

if [ -f "$out_dir/report.md" ]; then
  say "the start of $out_dir/report.md"
  head -n 20 "$out_dir/report.md"
fi

say "done: the report, chart and summary of run $run_id are in $out_dir"
data_flag=
[ "$data_dir" = "$root/.paddock" ] || data_flag=" --data-dir $data_dir"
cat <<EOF
To try more, start a host and run the agent with an input:
  bin/paddock serve$data_flag &
  bin/paddock run$data_flag $agent_name --input '{"region": "north"}' --follow
EOF
