#!/usr/bin/env bash
# Renders the templates of the Nomad job `janus deploy --emit nomad` writes with Go's text/template and
# stand-ins for consul-template's functions (two stable and one debug service registration), then
# loads the router's rendered config with `lb-router --check`. Needs Go (apt-get install golang-go);
# not part of scripts/test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'name = "shop"\nservice = "%s/samples/faulty"\n[stable]\ncount = 2\n[debug]\ncount = 1\n' "$root" >"$work/cluster.toml"
cargo build -q -p janus -p lb-router --release --manifest-path "$root/Cargo.toml"
"$root/target/release/janus" deploy --emit nomad "$work/out" -f "$work/cluster.toml" >/dev/null 2>&1
mkdir -p "$work/alloc/data" "$work/rendered"
(cd "$here" && go run main.go "$work/out/janus-shop.nomad.json" "$work/alloc" "$work/rendered")
grep -c '^\[\[nodes\]\]' "$work/rendered/router_router.toml" | grep -qx 3 || { echo "expected 3 [[nodes]]" >&2; exit 1; }
mapfile -t vars <"$work/rendered/router_router.env"
env -i "${vars[@]}" "$root/target/release/lb-router" --check --config "$work/rendered/router_router.toml"
