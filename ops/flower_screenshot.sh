#!/usr/bin/env bash
# Screenshots of Flower during a demo run (docs/flower-*.png in the README):
# starts `wanq run` on the sample batch with 8 s generations, waits for Flower's URL,
# and renders its Workers and Tasks pages with headless Chromium (Debian: apt-get install
# chromium). Usage: ops/flower_screenshot.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs}"
work="$(mktemp -d)"
trap 'kill %1 2>/dev/null || true; wait || true; rm -rf "$work"' EXIT
mkdir -p "$out"

WANQ_DATA_DIR="$work/data" WANQ_REDIS_URL= WANQ_PROVIDER_URL= WANQ_SIM_LATENCY=8 \
  WANQ_SIM_P_FAIL=0.03 WANQ_SIM_P_500=0.03 WANQ_MAX_IN_FLIGHT=60 \
  .venv/bin/wanq run ops/samples/demo.jsonl --allow-invalid --sim >"$work/run.log" 2>&1 &

url=""
for _ in $(seq 1 90); do
  url="$(grep -o 'http://127.0.0.1:[0-9]*' <(grep 'Flower' "$work/run.log") || true)"
  [ -n "$url" ] && break
  sleep 1
done
[ -n "$url" ] || { cat "$work/run.log"; echo "Flower never answered" >&2; exit 1; }
sleep 8  # let the batch get going: the picture is of a busy cluster

shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile-$2" --hide-scrollbars --window-size=1400,900 \
    --virtual-time-budget=6000 --screenshot="$out/flower-$2.png" "$1" >/dev/null 2>&1
}
shot "$url/" dashboard
shot "$url/tasks" tasks
echo "wrote $out/flower-dashboard.png and $out/flower-tasks.png"
