#!/bin/sh
# The Go echo example (echo_go/), built once and cached, then exec'd:
#
#   runtimeuse --handler handlers/examples/echo_go.sh
#
# The SDK comes from $RUNTIMEUSE_SDK_DIR/go (the runtime unpacks its copy
# there for the handlers it starts), else from this repository. A go.work
# in the cache directory uses both modules, so nothing is fetched. The
# binary is keyed by a checksum of the sources; a changed source builds a
# new one. Build output goes to stderr (the handler's log).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src="$here/echo_go"
sdk="${RUNTIMEUSE_SDK_DIR:-$here/../sdk}/go"
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/runtimeuse/examples"

if ! command -v go >/dev/null 2>&1; then
  echo "echo_go.sh: the go toolchain is not on PATH (apt-get install golang-go)" >&2
  exit 127
fi
key=$(cat "$src"/go.mod "$src"/*.go "$sdk"/go.mod "$sdk"/*.go | cksum | cut -d' ' -f1)
bin="$cache/echo_go-$key"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  printf 'go 1.19\n\nuse (\n\t%s\n\t%s\n)\n' "$src" "$sdk" > "$work/go.work"
  (cd "$src" && GOWORK="$work/go.work" GOFLAGS= GOPROXY=off go build -o "$work/echo_go" .) >&2
  mv -f "$work/echo_go" "$bin" # atomic: concurrent builds agree
  rm -rf "$work"
  trap - EXIT
fi
exec "$bin"
