#!/usr/bin/env bash
# Installs the npm libraries the race writers use (scripts/package.json, pinned by
# scripts/package-lock.json) into a cache dir, once, and prints the node_modules path.
# Safe to run concurrently: a flock on the cache dir serializes installers.
#
#   NODE_PATH="$(scripts/npm-deps.sh)" node scripts/writers/node_wfa.js ...
#
# The cache dir is $LOCKFS_NPM_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/lockfs/npm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${LOCKFS_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lockfs/npm}"
mkdir -p "$prefix"

exec 9>"$prefix/.install.lock"
flock 9

stamp="$prefix/.installed-lock"
# Every dependency named in package.json must be there, and the lock must be the one
# installed (a changed package.json or lock reinstalls).
all_present() {
    local name
    for name in $(node -e 'console.log(Object.keys(require(process.argv[1]).dependencies).join(" "))' \
        "$here/package.json"); do
        [[ -d "$prefix/node_modules/$name" ]] || return 1
    done
}
if [[ -f "$stamp" ]] && cmp -s "$stamp" "$here/package-lock.json" && all_present; then
    printf '%s\n' "$prefix/node_modules"
    exit 0
fi

cp "$here/package.json" "$here/package-lock.json" "$prefix/"
if ! npm ci --prefix "$prefix" --no-audit --no-fund --loglevel=error >"$prefix/.install.log" 2>&1; then
    echo "npm-deps: npm ci into $prefix failed:" >&2
    cat "$prefix/.install.log" >&2
    exit 1
fi
cp "$here/package-lock.json" "$stamp"
printf '%s\n' "$prefix/node_modules"
