#!/usr/bin/env bash
# The feature browser in a real browser: a fresh demo lake served by `saerl serve`, its study,
# a transition and a drifted feature's page loaded in headless Chromium. Fails on a console
# error or a missing element; writes the screenshots to OUT (default: a temporary directory).
# Usage: bash tests/browser/check.sh SAERL_BINARY [OUT]     (.ci/run runs it once per run)
set -euo pipefail
saerl="$1"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
chromium="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$chromium" ]; then
    echo "chromium not found: apt-get install chromium (.ci/run installs it)" >&2
    exit 1
fi
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$saerl" demo --out "$work/demo" --prompts 60 >"$work/demo.log" 2>&1 || { cat "$work/demo.log"; exit 1; }
grep -q "saerl serve --lake" "$work/demo.log" || { echo "the demo does not print how to browse its lake" >&2; exit 1; }
lake="$work/demo/lake"
port=$(( 20000 + RANDOM % 20000 ))
"$saerl" --lake "$lake" serve --bind "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
done
base="http://127.0.0.1:$port"
sql() { "$saerl" --lake "$lake" sql --format csv -c "$1" | tail -n +2; }
IFS=, read -r chain layer k from to < <(sql "SELECT chain, layer, k, stage_from, stage_to FROM sae_transitions WHERE chain = 'tiny' ORDER BY layer, step_to LIMIT 1")
feature=$(sql "SELECT feature FROM feature_drift WHERE chain = '$chain' AND layer = $layer AND k = $k AND stage_to = '$to' ORDER BY dec_cos, feature LIMIT 1")

failed=0
check() { # name url marker...
    local name="$1" url="$2"; shift 2
    local flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
        --disable-background-networking --disable-component-update --disable-sync
        --user-data-dir="$work/profile-$name" --window-size=1280,1600)
    "$chromium" "${flags[@]}" --enable-logging=stderr --v=0 --dump-dom "$url" >"$work/$name.html" 2>"$work/$name.console" || true
    if grep -E "CONSOLE.*(Uncaught|Error)|:ERROR:CONSOLE" "$work/$name.console"; then
        echo "$name: console error at $url" >&2; failed=1
    fi
    for marker in "$@"; do
        if ! grep -qF "$marker" "$work/$name.html"; then
            echo "$name: no \"$marker\" in $url" >&2; failed=1
        fi
    done
    "$chromium" "${flags[@]}" --screenshot="$out/$name.png" "$url" >/dev/null 2>&1 || true
    [ -s "$out/$name.png" ] || { echo "$name: no screenshot" >&2; failed=1; }
}
check study "$base/" "The study" "$chain · layer $layer · k $k" "transition/$from/$to"
check transition "$base/chain/$chain/layer/$layer/k/$k/transition/$from/$to" "Decoder cosine" "median quadrants" "Most-drifted features" "feature/$feature"
check feature "$base/chain/$chain/layer/$layer/k/$k/feature/$feature" "Feature $feature" "Life along the chain" "class=\"ctx\"" "Activation histogram" "Logit effects" "Interval "
echo "screenshots in $out"
exit "$failed"
