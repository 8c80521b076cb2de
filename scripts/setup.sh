#!/usr/bin/env bash
# Installs what lockfs's demo, tests and benchmarks need on a fresh Debian machine,
# idempotently (a second run does nothing and takes a second). Shared by .ci/run.
#
#   scripts/setup.sh            Debian packages, npm libraries, cargo tools (pjdfstest, fsx),
#                               matplotlib (benchmark plots)
#   scripts/setup.sh --minimal  Debian packages and npm libraries only (enough for the demo)
#
# Needs root (or sudo) only when a Debian package is missing. Expects the Rust toolchain,
# node >= 20 and npm to be installed already (they are not taken from Debian, whose
# nodejs is older).
set -euo pipefail

# Debian packages the tests and benchmarks use:
#   fuse3     fusermount3 (AutoUnmount, lazy unmount of a dead daemon)
#   sqlite3   S11 (SQLite WAL through the mount)
#   bindfs mergerfs  plain FUSE passthroughs to compare against
#   strace    tracing what real programs do
#   python3   S4 writer
#   stress-ng fio hyperfine  reliability and benchmark runs
#   util-linux procps coreutils sed  flock, timeout, ps, mv, sed for the scripts
#   git rsync jq moreutils gawk  real programs as the oracle (S14, S15: tests/real_programs.rs,
#             scripts/bench-real); moreutils gives sponge
#   etcd-server etcd-client  leases across hosts (tests/cluster.rs starts its own members;
#             nothing is left running)
DEBIAN_PACKAGES=(fuse3 sqlite3 bindfs mergerfs strace python3 stress-ng fio hyperfine
    util-linux procps coreutils sed git rsync jq moreutils gawk etcd-server etcd-client)
# Wanted by the packaging tests (systemd-analyze verify of the unit, dpkg-deb for the
# package); installed when missing, but a machine that refuses them still runs the rest.
OPTIONAL_PACKAGES=(systemd dpkg-dev)
# Rust tools from crates.io (skipped with --minimal): the POSIX suite and the exerciser.
CARGO_TOOLS=(pjdfstest fsx)
# Python packages from PyPI (skipped with --minimal): scripts/bench draws its plots with
# matplotlib. Nothing else needs it, so a machine that cannot install it still runs all.
PYTHON_PACKAGES=(matplotlib)

minimal=0
case "${1:-}" in
    --minimal) minimal=1 ;;
    "") ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { echo "setup: $*" >&2; }

for tool in cargo node npm; do
    if ! command -v "$tool" >/dev/null; then
        say "$tool is missing; install the Rust toolchain (rustup) and node >= 20 with npm first"
        exit 1
    fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [[ "$node_major" -lt 20 ]]; then
    say "node $(node --version) is too old; the writers need node >= 20"
    exit 1
fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null; then sudo=(sudo); else
            say "not root and no sudo; install these Debian packages: ${missing[*]}"
            exit 1
        fi
    fi
    say "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for pkg in "${OPTIONAL_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        if [[ "$(id -u)" -ne 0 ]]; then
            say "optional Debian package $pkg is missing (packaging tests will skip)"
            continue
        fi
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" \
            >/dev/null || say "could not install $pkg; the packaging tests that need it skip"
    fi
done

say "npm libraries: $("$here/npm-deps.sh")"

if [[ $minimal -eq 0 ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    for tool in "${CARGO_TOOLS[@]}"; do
        if ! command -v "$tool" >/dev/null; then
            say "cargo install $tool (a few minutes, once)"
            cargo install --locked --quiet "$tool"
        fi
    done
fi

if [[ $minimal -eq 0 ]]; then
    for pkg in "${PYTHON_PACKAGES[@]}"; do
        if ! python3 -c "import $pkg" 2>/dev/null; then
            say "pip install $pkg (for the benchmark plots)"
            python3 -m pip install --quiet --disable-pip-version-check "$pkg" >/dev/null 2>&1 \
                || say "could not install $pkg; scripts/bench will draw no plots"
        fi
    done
fi

if [[ ! -c /dev/fuse ]]; then
    say "warning: /dev/fuse is missing; the mount cannot work here (see lockfs doctor)"
fi
say "ready"
