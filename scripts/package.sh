#!/bin/sh
# Builds the Debian package: target/debian/lockfs_VERSION_ARCH.deb.
# Generates man pages and shell completions from the CLI first (into target/packaging/),
# and installs cargo-deb if it is missing.
set -eu
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
    cargo install cargo-deb --locked
fi

cargo build --release --locked
bin=target/release/lockfs
stage=target/packaging
rm -rf "$stage"
mkdir -p "$stage/man" "$stage/completions" "$stage/node"

"$bin" man "$stage/man"
gzip -9n "$stage"/man/*.1
"$bin" completions bash >"$stage/completions/lockfs.bash"
"$bin" completions zsh >"$stage/completions/_lockfs"
"$bin" completions fish >"$stage/completions/lockfs.fish"

# The Node preload shim ships once it exists; an empty placeholder keeps the asset glob
# matching until then, and is left out of the package by name.
if [ -f packaging/node/lockfs-shim.js ]; then
    cp packaging/node/lockfs-shim.js "$stage/node/"
fi

cargo deb --no-build --locked "$@"
ls -l target/debian/*.deb
