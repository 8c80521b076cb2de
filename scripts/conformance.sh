#!/usr/bin/env bash
# Conformance of the lockfs overlay: pjdfstest natively and through a mount (every test
# that passes natively must pass through the mount), then fsx through the mount; both in
# the passthrough and the daemon read/write data path. Needs root (pjdfstest switches to
# the dummy users nobody/nogroup and daemon/daemon).
#
# Usage: scripts/conformance.sh [path/to/lockfs]    (default: target/debug/lockfs)
# FSX_OPS (default 100000) sets the fsx operation count; STRESS_SECS (default 60) the
# stress-ng run (--rename --link --flock --lockf --iomix --dentry --verify) through the
# mount in each data path.
set -euo pipefail

cd "$(dirname "$0")/.."
LOCKFS=${1:-target/debug/lockfs}
[ -x "$LOCKFS" ] || cargo build --quiet
LOCKFS=$(realpath "$LOCKFS")

# Tests that cannot pass through any FUSE mount, with the reason.
declare -A KNOWN=(
  ["link::link_count_max"]="glibc pathconf(_PC_LINK_MAX) knows no limit for f_type FUSE, so the test skips"
)

for tool in pjdfstest fsx; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool (cargo install $tool)"
    cargo install --quiet "$tool"
  fi
done

WORK=$(mktemp -d /tmp/lockfs-conformance.XXXXXX)
chmod 755 "$WORK"   # the dummy users must reach the test dirs
MNT="$WORK/mnt"
cleanup() {
  if grep -q " $MNT " /proc/self/mountinfo; then
    "$LOCKFS" unmount "$MNT" 2>/dev/null || umount -l "$MNT"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.05
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
TOML

# Judges a stress-ng run: $1 label, $2 log, $3 exit status. Exit 7 alone ("bogo-op
# metrics may be untrustworthy": a stressor was stopped at the timeout inside a counter
# update, seen once in CI with both conformance tests running on two cores) says nothing
# about the file system, so it passes when no stressor reported a failure; any other
# non-zero status fails, with the lines that say why.
judge_stress_ng() {
  local why
  why=$(grep -E 'fail|error|WARNING|skipp|untrustworthy|no resource' "$2" | head -20 || true)
  if [ "$3" -eq 0 ] || { [ "$3" -eq 7 ] && ! grep -q 'fail:' "$2"; }; then
    echo "$1: clean${why:+ (exit $3; stress-ng said:)}"
    [ -n "$why" ] && sed 's/^/    /' <<<"$why"
    return 0
  fi
  echo "$1 FAILED (stress-ng exit $3):"
  [ -n "$why" ] && sed 's/^/    /' <<<"$why"
  tail -30 "$2"
  return 1
}

# "name status" lines of a pjdfstest run in directory $1.
run_pjdfstest() {
  (cd "$1" && pjdfstest -c "$WORK/pjdfstest.toml" -p "$1" > "$2" 2>&1) || true
  grep -E '^[a-z_:0-9]+ +(ok|FAILED|skipped)$' "$2" | awk '{print $1, $2}' | sort
}

mkdir "$WORK/native"
run_pjdfstest "$WORK/native" "$WORK/native.log" > "$WORK/native.txt"
native_passed=$(grep -c ' ok$' "$WORK/native.txt" || true)
echo "pjdfstest native: $native_passed passed"
[ "$native_passed" -gt 300 ] || { echo "native run looks broken:"; tail -20 "$WORK/native.log"; exit 1; }

failed=()
for mode in passthrough no-passthrough; do
  mkdir -p "$MNT"
  args=(--allow-other --log-file "$WORK/daemon-$mode.log")
  [ "$mode" = no-passthrough ] && args+=(--no-passthrough)
  "$LOCKFS" mount "$MNT" "${args[@]}"

  run_pjdfstest "$MNT" "$WORK/mount-$mode.log" > "$WORK/mount-$mode.txt"
  mount_passed=$(grep -c ' ok$' "$WORK/mount-$mode.txt" || true)
  echo "pjdfstest through lockfs ($mode): $mount_passed passed"
  while read -r name _; do
    got=$(awk -v n="$name" '$1 == n {print $2}' "$WORK/mount-$mode.txt")
    [ "$got" = ok ] && continue
    if [ -n "${KNOWN[$name]:-}" ]; then
      echo "  known: $name $got (${KNOWN[$name]})"
      continue
    fi
    # One more run of just this test tells a flake under load (open::etxtbsy failed
    # about one CI run in four while stress-ng ran beside it) from a regression; both
    # are printed, and the daemon's log is kept for the flake's post-mortem.
    retry=$( (cd "$MNT" && pjdfstest -c "$WORK/pjdfstest.toml" -p "$MNT" "$name" 2>&1) || true)
    if grep -qE "^$name +ok$" <<<"$retry"; then
      keep="${TMPDIR:-/tmp}/lockfs-conformance-flake-$mode.log"
      cp "$WORK/daemon-$mode.log" "$keep" 2>/dev/null || true
      echo "  FLAKY: $name failed once through lockfs and passed when run again (daemon log: $keep)"
      grep -A3 "^$name " "$WORK/mount-$mode.log" | sed 's/^/    /' || true
    else
      echo "  REGRESSION: $name passes natively, through lockfs: ${got:-missing}"
      grep -A3 "^$name " "$WORK/mount-$mode.log" | sed 's/^/    /' || true
      failed+=("pjdfstest $name ($mode)")
    fi
  done < <(grep ' ok$' "$WORK/native.txt")

  if (cd "$MNT" && fsx -N "${FSX_OPS:-100000}" -S 42 "$MNT/fsxfile" > "$WORK/fsx-$mode.log" 2>&1); then
    echo "fsx through lockfs ($mode): $(tail -1 "$WORK/fsx-$mode.log")"
  else
    echo "fsx through lockfs ($mode) FAILED:"
    tail -30 "$WORK/fsx-$mode.log"
    failed+=("fsx ($mode)")
  fi
  if command -v stress-ng >/dev/null; then
    mkdir -p "$MNT/stress"
    rc=0
    stress-ng --temp-path "$MNT/stress" --rename 2 --link 2 --flock 2 --lockf 2 \
        --iomix 1 --dentry 2 --verify --timeout "${STRESS_SECS:-60}s" --metrics-brief \
        > "$WORK/stress-$mode.log" 2>&1 || rc=$?
    judge_stress_ng "stress-ng through lockfs ($mode)" "$WORK/stress-$mode.log" "$rc" \
      || failed+=("stress-ng ($mode)")
    rm -rf "$MNT/stress"
  else
    echo "stress-ng missing (scripts/setup.sh installs it)"
    failed+=("stress-ng missing")
  fi
  "$LOCKFS" unmount "$MNT"
done

if [ "${#failed[@]}" -eq 0 ]; then
  echo "conformance: OK"
else
  # Repeated last, so that the tail of a long CI log names what failed.
  echo "conformance: FAILED: ${failed[*]}"
  exit 1
fi
