#!/usr/bin/env bash
# shellcheck disable=SC2317  # scenario functions run indirectly, as "run_$s"
# Races unmodified-style writers against DIR and counts the updates that survived.
#
#   scripts/race.sh DIR [--quick] [--strict] [--json] [--only LIST] [--timeout SECS] [--keep]
#   scripts/race.sh --list
#
# DIR may be a plain directory or a lockfs mount; the script does not care. Each scenario
# runs on its own fresh store in DIR/race-<scenario>, which it creates and removes.
# On a plain directory the table shows lost updates (that is the point); under lockfs
# every row should show lost 0, torn 0, errors 0.
#
#   --quick        fewer cycles (for tests and demos)
#   --strict       exit 1 if any update was lost or any process failed
#   --json         print one JSON document instead of the table (progress goes to stderr)
#   --only LIST    comma-separated scenarios or groups, e.g. S1,S2 or S2-K4 (see --list)
#   --timeout S    kill a scenario's processes after S seconds (default 300); counted as errors
#   --keep         leave the race-<scenario> dirs in DIR
#
# --json prints {"dir", "quick", "lost" (total), "results": [{"scenario", "description",
# "writers", "expected", "present", "lost", "torn", "errors", "seconds", "notes": [..]}]}.
# lost = expected keys missing from the final store; torn = unparsable lines or store plus
# torn/empty reads the writers retried; errors = processes that exited non-zero (their
# first error line is in notes). S10 has no keys: expected/present/lost are 0 there.
#
# The S14 and S15 rows run real programs unmodified (npm conf, configstore,
# write-json-file, keyv-file; Python shelve on dbm.dumb; shell cycles whose reader is
# cat, sed, awk or jq, and jq | sponge). Their writers keep going after a failed update,
# so those rows also carry "acknowledged" (updates whose library call or last shell step
# returned success), "ack_lost" (acknowledged but missing from the store: a silent loss),
# "refused" (updates that failed with an error) and "max_cycle_ms" (the longest single
# cycle). Their counts are the same in --quick and full runs (4 x 25, shells 8 x 20).
# The S14-shelve row adds one error when the database cannot be opened at the end.
#
# Exit status: 0 unless the script itself broke (2) or --strict found a loss (1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
W="$here/writers"

SCENARIOS=(S1 S1-fssafe S2-K2 S2-K4 S3 S4 S5 S5-pidtmp S6 S7-wfa S7-custom S10
    S14-conf S14-configstore S14-configstore-absent S14-write-json-file S14-keyv-file
    S14-shelve S15-cat-pidtmp S15-cat-shared S15-sed-pidtmp S15-sed-shared S15-awk-pidtmp
    S15-awk-shared S15-jq-pidtmp S15-jq-shared S15-sponge)
describe() {
    case "$1" in
        S1) echo "Node processes: readFile, add key, writeFile(<target>.<pid>.<hex>.tmp), rename" ;;
        S1-fssafe) echo "as S1 with temp .fs-safe-replace.<pid>.<uuid>.tmp (no target name)" ;;
        S2-K2) echo "one Node process, Promise.all of 2 cycles per round" ;;
        S2-K4) echo "one Node process, Promise.all of 4 cycles per round" ;;
        S3) echo "Node appendFile JSONL lines while a compactor rewrites via temp + rename" ;;
        S4) echo "Python json.load, NamedTemporaryFile(dir=...), os.replace" ;;
        S5) echo "shell: sed ... store > store.tmp && mv store.tmp store" ;;
        S5-pidtmp) echo "as S5 with store.\$\$.tmp per writer" ;;
        S6) echo "Node writeFile(store) in place (O_TRUNC), plus a reader that rejects empty reads" ;;
        S7-wfa) echo "Node write-file-atomic (temp <target>.<uint32>, fsync, rename)" ;;
        S7-custom) echo "Node atomic write with temp .swap-<pid>-<hex> (no target name)" ;;
        S10) echo "readers in a loop while a writer replaces the file (no ENOENT, no partial)" ;;
        S14-conf) echo "npm conf 15: one Conf per process, conf.set() of unique keys" ;;
        S14-configstore) echo "npm configstore 8, file present: new Configstore() at start, set()" ;;
        S14-configstore-absent) echo "npm configstore 8, file and its directory absent at start" ;;
        S14-write-json-file) echo "npm write-json-file 7: readFile, add key, writeJsonFile()" ;;
        S14-keyv-file) echo "npm keyv 5 + keyv-file: new Keyv per update, await set() (saves 100 ms later, in place)" ;;
        S14-shelve) echo "Python shelve on dbm.dumb: open, add a key, close" ;;
        S15-cat-pidtmp) echo "shell: { cat store; echo key; } > store.\$\$.tmp && mv (copy_file_range)" ;;
        S15-cat-shared) echo "shell: { cat store; echo key; } > store.tmp && mv, one temp name for all" ;;
        S15-sed-pidtmp) echo 'shell: sed "$a key" store > store.$$.tmp && mv' ;;
        S15-sed-shared) echo 'shell: sed "$a key" store > store.tmp && mv, one temp name for all' ;;
        S15-awk-pidtmp) echo "shell: awk '{print} END {print k}' store > store.\$\$.tmp && mv" ;;
        S15-awk-shared) echo "shell: awk ... store > store.tmp && mv, one temp name for all" ;;
        S15-jq-pidtmp) echo 'shell: jq ". + {($k): 1}" store.json > store.json.$$.tmp && mv' ;;
        S15-jq-shared) echo "shell: jq ... store.json > store.json.tmp && mv, one temp name for all" ;;
        S15-sponge) echo "shell: jq ... store.json | sponge store.json (reader and in-place writer)" ;;
    esac
}

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }

dir="" quick=0 strict=0 json=0 only="" timeout_s=300 keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --strict) strict=1 ;;
        --json) json=1 ;;
        --keep) keep=1 ;;
        --only) only="${2:?--only needs a list}"; shift ;;
        --only=*) only="${1#--only=}" ;;
        --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
        --list)
            for s in "${SCENARIOS[@]}"; do printf '%-23s %s\n' "$s" "$(describe "$s")"; done
            exit 0 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "race.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)
            if [[ -n "$dir" ]]; then echo "race.sh: one DIR only" >&2; exit 2; fi
            dir="$1" ;;
    esac
    shift
done
if [[ -z "$dir" ]]; then usage >&2; exit 2; fi
if [[ ! -d "$dir" ]]; then echo "race.sh: $dir is not a directory" >&2; exit 2; fi
dir="$(cd "$dir" && pwd)"

log() { echo "race.sh: $*" >&2; }

selected() {
    local name=$1 tok
    [[ -z "$only" ]] && return 0
    IFS=',' read -ra toks <<< "$only"
    for tok in "${toks[@]}"; do
        [[ "$name" == "$tok" || "$name" == "$tok"-* ]] && return 0
    done
    return 1
}

if [[ -n "$only" ]]; then
    IFS=',' read -ra toks <<< "$only"
    for tok in "${toks[@]}"; do
        found=0
        for s in "${SCENARIOS[@]}"; do
            [[ "$s" == "$tok" || "$s" == "$tok"-* ]] && found=1
        done
        if [[ $found -eq 0 ]]; then echo "race.sh: unknown scenario $tok (see --list)" >&2; exit 2; fi
    done
fi

# npm libraries for S7 (write-file-atomic) and the S14 rows (conf, configstore, ...).
need_npm=0
for s in "${SCENARIOS[@]}"; do
    case "$s" in
        S7-wfa|S14-conf|S14-configstore*|S14-write-json-file|S14-keyv-file)
            if selected "$s"; then need_npm=1; fi ;;
    esac
done
if [[ $need_npm -eq 1 ]]; then
    NODE_PATH="$("$here/npm-deps.sh")"
    export NODE_PATH
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lockfs-race.XXXXXX")"
results="$work/results.jsonl"
: > "$results"
pids=()
current=""
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n "$current" && $keep -eq 0 ]]; then rm -rf -- "$current"; fi
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# q FULL QUICK: pick a count by mode.
q() { if [[ $quick -eq 1 ]]; then echo "$2"; else echo "$1"; fi; }

# spawn ROLE CMD...: start one process in the background, logs in $logs/ROLE.*
spawn() {
    local role=$1; shift
    timeout -k 5 "$timeout_s" "$@" > "$logs/$role.out" 2> "$logs/$role.err" &
    pids+=("$!")
    roles+=("$role")
}

# wait_role I: wait for the I-th spawned process (once) and record its exit code.
wait_role() {
    local rc=0
    [[ -f "$logs/${roles[$1]}.rc" ]] && return 0
    wait "${pids[$1]}" || rc=$?
    echo "$rc" > "$logs/${roles[$1]}.rc"
}

# wait_first N: wait for the first N spawned processes (the writers).
wait_first() {
    local i
    for ((i = 0; i < $1; i++)); do wait_role "$i"; done
}

# reap: wait for every spawned process, recording exit codes.
reap() {
    local i
    for i in "${!pids[@]}"; do wait_role "$i"; done
    pids=() roles=()
}

# begin NAME: fresh store dir and log dir for one scenario.
begin() {
    name=$1
    sdir="$dir/race-$name"
    logs="$work/logs-$name"
    rm -rf -- "$sdir"
    mkdir -p "$sdir" "$logs"
    current="$sdir"
    pids=() roles=()
    started=$(date +%s.%N)
    log "$name: $(describe "$name")"
}

# finish WRITERS [COUNT_ARGS...]: count survivors, record the row, remove the store dir.
# After begin_acked, the count also checks the writers' acknowledged keys.
finish() {
    local writers=$1; shift
    local count="" secs
    secs=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    if [[ $# -gt 0 ]]; then
        if [[ -n "${LOCKFS_COMMIT_LOG:-}" ]]; then
            count="$(node "$W/count.js" "$@" --acked "$LOCKFS_COMMIT_LOG")"
        else
            count="$(node "$W/count.js" "$@")"
        fi
    fi
    unset LOCKFS_COMMIT_LOG
    node "$W/report.js" add "$results" --scenario "$name" --description "$(describe "$name")" \
        --writers "$writers" --logs "$logs" --seconds "$secs" ${count:+--count "$count"}
    if [[ $keep -eq 0 ]]; then rm -rf -- "$sdir"; fi
    current=""
}

spec_for() { # spec_for PREFIX N COUNT -> PREFIX0:COUNT,PREFIX1:COUNT,...
    local out="" i
    for ((i = 0; i < $2; i++)); do out+="${out:+,}$1$i:$3"; done
    echo "$out"
}

json_cycles() { # json_cycles NAME WRITER_SCRIPT N M [ARGS...]
    local name=$1 script=$2 n=$3 m=$4 i; shift 4
    begin "$name"
    echo '{}' > "$sdir/store.json"
    for ((i = 0; i < n; i++)); do spawn "w$i" "$@" "$W/$script" "$sdir" store.json "w$i" "$m"; done
    reap
    finish "$n" "$sdir/store.json" json "$(spec_for w "$n" "$m")"
}

run_S1() {
    json_cycles S1 node_cycle.js 4 "$(q 50 20)" node
}
run_S1-fssafe() {
    local n=4 m i; m=$(q 50 20)
    begin S1-fssafe
    echo '{}' > "$sdir/store.json"
    for ((i = 0; i < n; i++)); do
        spawn "w$i" node "$W/node_cycle.js" "$sdir" store.json "w$i" "$m" --tmp fs-safe
    done
    reap
    finish "$n" "$sdir/store.json" json "$(spec_for w "$n" "$m")"
}
s2() {
    local k=$1 rounds=$2
    begin "S2-K$k"
    echo '{}' > "$sdir/store.json"
    spawn p0 node "$W/node_promise_all.js" "$sdir" store.json p0 "$k" "$rounds"
    reap
    finish 1 "$sdir/store.json" json "p0:$((k * rounds))"
}
run_S2-K2() { s2 2 "$(q 50 20)"; }
run_S2-K4() { s2 4 "$(q 25 10)"; }
run_S3() {
    local n=3 m i; m=$(q 100 40)
    begin S3
    : > "$sdir/log.jsonl"
    rm -f "$work/stop-S3"
    for ((i = 0; i < n; i++)); do spawn "a$i" node "$W/node_append.js" "$sdir" log.jsonl "a$i" "$m"; done
    spawn compactor node "$W/node_compact.js" "$sdir" log.jsonl 0 --stop-file "$work/stop-S3"
    wait_first "$n"
    touch "$work/stop-S3"
    reap
    finish "$((n + 1))" "$sdir/log.jsonl" jsonl "$(spec_for a "$n" "$m")"
}
run_S4() {
    json_cycles S4 py_cycle.py 4 "$(q 30 15)" python3
}
s5() {
    local name=$1 style=$2 n=3 m i; m=$(q 30 15)
    begin "$name"
    echo '# store' > "$sdir/store.txt"
    for ((i = 0; i < n; i++)); do
        spawn "w$i" bash "$W/sh_cycle.sh" "$sdir" store.txt "w$i" "$m" "$style"
    done
    reap
    finish "$n" "$sdir/store.txt" lines "$(spec_for w "$n" "$m")"
}
run_S5() { s5 S5 fixed; }
run_S5-pidtmp() { s5 S5-pidtmp pid; }
run_S6() {
    local n=4 m i; m=$(q 30 15)
    begin S6
    echo '{}' > "$sdir/store.json"
    rm -f "$work/stop-S6"
    for ((i = 0; i < n; i++)); do
        spawn "w$i" node "$W/node_inplace.js" "$sdir" store.json "w$i" "$m" --on-torn retry
    done
    spawn reader node "$W/node_reader.js" "$sdir" store.json --stop-file "$work/stop-S6"
    wait_first "$n"
    touch "$work/stop-S6"
    reap
    finish "$n" "$sdir/store.json" json "$(spec_for w "$n" "$m")"
}
run_S7-wfa() {
    local n=4 m i; m=$(q 30 15)
    begin S7-wfa
    echo '{}' > "$sdir/store.json"
    for ((i = 0; i < n; i++)); do spawn "w$i" node "$W/node_wfa.js" "$sdir" store.json "w$i" "$m"; done
    reap
    finish "$n" "$sdir/store.json" json "$(spec_for w "$n" "$m")"
}
run_S7-custom() {
    local n=4 m i; m=$(q 30 15)
    begin S7-custom
    echo '{}' > "$sdir/store.json"
    for ((i = 0; i < n; i++)); do
        spawn "w$i" node "$W/node_wfa.js" "$sdir" store.json "w$i" "$m" --tmp custom
    done
    reap
    finish "$n" "$sdir/store.json" json "$(spec_for w "$n" "$m")"
}
run_S10() {
    local count i; count=$(q 300 100)
    begin S10
    echo '{"version":-1}' > "$sdir/store.json"
    rm -f "$work/stop-S10"
    spawn replacer node "$W/node_replace.js" "$sdir" store.json r0 "$count"
    for i in 0 1; do
        spawn "reader$i" node "$W/node_reader.js" "$sdir" store.json --id "reader$i" \
            --stop-file "$work/stop-S10"
    done
    wait_first 1
    touch "$work/stop-S10"
    reap
    finish 3
}

# begin_acked NAME: begin, and have the writers log each acknowledged update (the
# real-program writers go on after a failure, so acknowledged and present can differ).
begin_acked() {
    begin "$1"
    export LOCKFS_COMMIT_LOG="$logs/acknowledged.log"
    : > "$LOCKFS_COMMIT_LOG"
}

# S14: real npm libraries, 4 processes x 25 updates.
real_node() { # real_node NAME WRITER_SCRIPT STORE_RELPATH [present|absent] [FORMAT]
    local name=$1 script=$2 store=$3 initial=${4:-present} format=${5:-json} n=4 m=25 i
    begin_acked "$name"
    if [[ $initial == present ]]; then
        mkdir -p "$(dirname "$sdir/$store")"
        echo '{}' > "$sdir/$store"
    fi
    for ((i = 0; i < n; i++)); do spawn "w$i" node "$W/$script" "$sdir" "$store" "w$i" "$m"; done
    reap
    finish "$n" "$sdir/$store" "$format" "$(spec_for w "$n" "$m")"
}
run_S14-conf() { real_node S14-conf real_conf.js store.json; }
run_S14-configstore() { real_node S14-configstore real_configstore.js configstore/store.json; }
run_S14-configstore-absent() {
    real_node S14-configstore-absent real_configstore.js configstore/store.json absent
}
run_S14-write-json-file() { real_node S14-write-json-file real_write_json_file.js store.json; }
run_S14-keyv-file() { real_node S14-keyv-file real_keyv_file.js store.json absent keyv; }
run_S14-shelve() {
    local n=4 m=25 i
    begin_acked S14-shelve
    for ((i = 0; i < n; i++)); do spawn "w$i" python3 "$W/py_shelve.py" "$sdir" state "w$i" "$m"; done
    reap
    # Opening the database at the end is part of the row: a database that cannot be
    # opened is an error (role open-db), and its keys are counted as lines.
    spawn open-db python3 "$W/py_shelve.py" --keys "$sdir" state "$logs/shelve-keys.txt"
    reap
    finish "$n" "$logs/shelve-keys.txt" lines "$(spec_for w "$n" "$m")"
}

# S15: shell cycles with real readers, 8 shells x 20 cycles.
real_shell() { # real_shell NAME READER pid|shared
    local name=$1 reader=$2 style=$3 n=8 m=20 i store=store.txt format=lines
    begin_acked "$name"
    if [[ $reader == jq || $reader == sponge ]]; then
        store=store.json format=json
        echo '{}' > "$sdir/$store"
    else
        echo '# store' > "$sdir/$store"
    fi
    for ((i = 0; i < n; i++)); do
        spawn "w$i" bash "$W/sh_real.sh" "$sdir" "$store" "w$i" "$m" "$reader" "$style"
    done
    reap
    finish "$n" "$sdir/$store" "$format" "$(spec_for w "$n" "$m")"
}
run_S15-cat-pidtmp() { real_shell S15-cat-pidtmp cat pid; }
run_S15-cat-shared() { real_shell S15-cat-shared cat shared; }
run_S15-sed-pidtmp() { real_shell S15-sed-pidtmp sed pid; }
run_S15-sed-shared() { real_shell S15-sed-shared sed shared; }
run_S15-awk-pidtmp() { real_shell S15-awk-pidtmp awk pid; }
run_S15-awk-shared() { real_shell S15-awk-shared awk shared; }
run_S15-jq-pidtmp() { real_shell S15-jq-pidtmp jq pid; }
run_S15-jq-shared() { real_shell S15-jq-shared jq shared; }
run_S15-sponge() { real_shell S15-sponge sponge shared; }

ran=0
for s in "${SCENARIOS[@]}"; do
    if selected "$s"; then
        "run_$s"
        ran=$((ran + 1))
    fi
done

if [[ $json -eq 1 ]]; then
    node "$W/report.js" print "$results" json --dir "$dir" --quick "$quick"
else
    echo "lockfs race: $dir ($(if [[ $quick -eq 1 ]]; then echo quick; else echo full; fi), $ran scenarios)"
    node "$W/report.js" print "$results" table
fi

if [[ $strict -eq 1 ]]; then
    bad=$(node -e '
        const rows = require("fs").readFileSync(process.argv[1], "utf8").split("\n")
            .filter(Boolean).map(JSON.parse);
        console.log(rows.filter((r) => r.lost > 0 || r.torn > 0 || r.errors > 0).length);
    ' "$results")
    [[ "$bad" -eq 0 ]] || exit 1
fi
exit 0
