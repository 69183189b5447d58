#!/usr/bin/env bash
# The demo behind `make demo`: starts a host on a free port, creates the example report agent
# (or updates the one an earlier demo made to the example's definition), runs it while printing
# its timeline, downloads the run's artifacts and shows the start of its report. With
# OPENAI_API_KEY or ANTHROPIC_API_KEY set (and OPENAI_BASE_URL or ANTHROPIC_BASE_URL, if given,
# for where that provider is), it registers the provider and runs the example AI agent on the
# report's summary, showing its briefing, model calls and cost. It ends with how to open the
# dashboard. Expects `make setup` and the base image (`make base-image`) to be done.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
data_dir=${DATA_DIR:-$root/.paddock}
paddock="$root/bin/paddock"
node="$root/.tools/node/bin/node"
agent_file="$root/examples/report-agent/agent.json"
agent_name=report-demo
briefing_file="$root/examples/briefing-agent/agent.json"
briefing_name=briefing-demo

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

# ensure_agent NAME FILE [FLAGS...]: creates the agent from FILE, or gives an earlier demo's agent
# the example's current definition (a new version only if it changed).
ensure_agent() {
  local name=$1 file=$2
  shift 2
  if [ "$("$paddock" agents list --name "$name" --json)" != "[]" ]; then
    say "updating agent $name to ${file#"$root"/}"
    "$paddock" agents update "$name" --file "$file" "$@"
  else
    say "creating agent $name from ${file#"$root"/}"
    "$paddock" agents create --file "$file" "$@"
  fi
}

# from_json EXPR [ARGS...]: prints a JavaScript expression of `v`, the JSON on stdin (a list of
# values for JSON lines), and `a`, the ARGS.
from_json() {
  "$node" -e '
    let text = "";
    process.stdin.on("data", (c) => (text += c));
    process.stdin.on("end", () => {
      let v;
      try {
        v = JSON.parse(text);
      } catch {
        v = text.split("\n").filter(Boolean).map((line) => JSON.parse(line));
      }
      console.log(new Function("v", "a", `return (${process.argv[1]});`)(v, process.argv.slice(2)) ?? "");
    });
  ' "$@"
}

# follow_run AGENT [FLAGS...]: runs the agent, printing its timeline; sets run_id and status.
follow_run() {
  set +e
  "$paddock" run "$@" --follow | tee "$run_out"
  status=${PIPESTATUS[0]}
  set -e
  run_id=$(sed -n '1s/^run \([^ ]*\) .*/\1/p' "$run_out")
  if [ -z "$run_id" ]; then
    echo "demo: the run of $1 did not start" >&2
    exit 1
  fi
}

ensure_agent "$agent_name" "$agent_file"
say "running $agent_name"
follow_run "$agent_name"

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
report_dir=$out_dir

# The AI part: the provider whose key is set, its model and its prices (credits per million
# input and output tokens, the provider's dollars).
provider=
if [ -n "${OPENAI_API_KEY:-}" ]; then
  provider=openai model=gpt-4.1-mini price=0.4/1.6 key=$OPENAI_API_KEY base_url=${OPENAI_BASE_URL:-}
elif [ -n "${ANTHROPIC_API_KEY:-}" ]; then
  provider=anthropic model=claude-haiku-4-5 price=1/5 key=$ANTHROPIC_API_KEY base_url=${ANTHROPIC_BASE_URL:-}
fi
ai_failed=
if [ -n "$provider" ]; then
  # A model another provider of this host serves already is used as it is; else the demo's own
  # provider (demo-openai or demo-anthropic) serves it with the key from the environment.
  served_by=$("$paddock" models --json | from_json 'v.find((m) => m.model === a[0])?.provider' "$model")
  if [ -n "$served_by" ] && [ "$served_by" != "demo-$provider" ]; then
    say "model $model: served by this host's provider $served_by"
  else
    say "registering the model provider demo-$provider for $model (its key from ${provider^^}_API_KEY)"
    printf %s "$key" | "$paddock" secrets set "demo-$provider-key"
    "$paddock" providers set "demo-$provider" --kind "$provider" --secret "demo-$provider-key" \
      --model "$model=$price" ${base_url:+--base-url "$base_url"}
  fi
  # A data folder made before hosts granted starting credits may have none.
  if [ "$("$paddock" credits --json | from_json 'v.tenant.available > 0')" != true ]; then
    say "granting this host's own tenant 1 credit for the demo"
    "$paddock" credits grant default 1 --note demo
  fi
  ensure_agent "$briefing_name" "$briefing_file" --model "$model"
  say "running $briefing_name: $model turns the summary.json of $run_id into a briefing"
  follow_run "$briefing_name" --input-file "$report_dir/summary.json"
  out_dir="$data_dir/demo-output/$run_id"
  "$paddock" artifacts "$run_id" --download "$out_dir" >/dev/null
  if [ "$status" -ne 0 ]; then
    ai_failed=1
    echo "demo: run $run_id did not succeed; its events: bin/paddock logs $run_id (with a host running)" >&2
  elif [ -f "$out_dir/briefing.md" ]; then
    say "the briefing ($out_dir/briefing.md)"
    cat "$out_dir/briefing.md"
  else
    # The model answered without saving the file: its answer ended the run.
    say "the model's answer (it wrote no briefing.md)"
    "$paddock" logs "$run_id" --json |
      from_json 'v.filter((e) => e.type === "user" && e.data.type === "agent.finished").at(-1)?.data.data.summary'
  fi
  say "the model calls of run $run_id and what they cost, in credits"
  "$paddock" credits "$run_id"
  "$paddock" credits
else
  say "the AI part: skipped (neither OPENAI_API_KEY nor ANTHROPIC_API_KEY is set)"
  cat <<EOF
With a model provider's key, the demo also runs examples/briefing-agent, a built-in AI agent that
reads the report's summary and writes a short briefing through the model, and shows its model
calls and their cost:
  OPENAI_API_KEY=sk-... make demo        (or ANTHROPIC_API_KEY=...)
EOF
fi

data_flag=
[ "$data_dir" = "$root/.paddock" ] || data_flag=" --data-dir $data_dir"
say "the dashboard"
cat <<EOF
Every run above, with its timeline, logs, artifacts and costs, is in the dashboard. Start a host
and open it, signing in with the admin API key (in $data_dir/admin.key):
  bin/paddock serve$data_flag &
  dashboard: http://127.0.0.1:7420/ui (sign in with the admin API key)
To try more, run the report agent with an input:
  bin/paddock run$data_flag $agent_name --input '{"region": "north"}' --follow
EOF
[ -z "$ai_failed" ] || exit 1
