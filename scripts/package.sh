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
mkdir -p "$stage/man" "$stage/completions"

"$bin" man "$stage/man"
gzip -9n "$stage"/man/*.1
"$bin" completions bash >"$stage/completions/lockfs.bash"
"$bin" completions zsh >"$stage/completions/_lockfs"
"$bin" completions fish >"$stage/completions/lockfs.fish"

# The Node preload shim ships once it exists (see the with-shim variant in Cargo.toml).
variant=""
if [ -f packaging/node/lockfs-shim.js ]; then
    variant="--variant=with-shim"
fi

rm -f target/debian/lockfs_*.deb
cargo deb --no-build --locked $variant "$@"
ls -l target/debian/*.deb
