#!/usr/bin/env bash
# S15: shell load-modify-save cycles with real tools as the reader, unmodified:
#   cat   { cat STORE; echo KEY; } > TMP && mv TMP STORE    (coreutils cat copies with
#         copy_file_range when its output is a regular file)
#   sed   sed '$a KEY' STORE > TMP && mv TMP STORE
#   awk   awk -v k=KEY '{ print } END { print k }' STORE > TMP && mv TMP STORE
#   jq    jq --arg k KEY '. + {($k): 1}' STORE > TMP && mv TMP STORE   (JSON store)
#   sponge  jq --arg k KEY '. + {($k): 1}' STORE | sponge STORE        (JSON store, no temp
#         of ours: the reader and the in-place writer are two processes of one pipeline)
#
#   sh_real.sh DIR STORE ID CYCLES cat|sed|awk|jq|sponge [pid|shared]
#
# pid (default) uses the temp STORE.$$.tmp per writer; shared uses STORE.tmp for every
# writer, as scripts run at once do. A cycle counts as acknowledged when its last step
# (mv, or sponge) exited 0; then ID-i is appended to LOCKFS_COMMIT_LOG (absolute path) if
# set. A failed step is printed and the writer goes on; it exits 1 at the end if any
# cycle failed. The summary line gives the longest single cycle (max_cycle_ms).
set -uo pipefail

if [[ $# -lt 5 ]]; then
    echo "usage: sh_real.sh DIR STORE ID CYCLES cat|sed|awk|jq|sponge [pid|shared]" >&2
    exit 2
fi
dir=$1 name=$2 id=$3 cycles=$4 reader=$5 style=${6:-pid}
cd "$dir" || exit 2
case "$style" in
    shared) tmp="$name.tmp" ;;
    pid) tmp="$name.$$.tmp" ;;
    *) echo "sh_real: unknown temp style $style (pid, shared)" >&2; exit 2 ;;
esac

# one_cycle KEY: one load-modify-save; returns non-zero (after printing why) on failure.
one_cycle() {
    local key=$1
    case "$reader" in
        cat) { cat "$name" && echo "$key"; } > "$tmp" || { echo "cat $name > $tmp failed" >&2; return 1; } ;;
        sed) sed "\$a $key" "$name" > "$tmp" || { echo "sed $name > $tmp failed" >&2; return 1; } ;;
        awk) awk -v k="$key" '{ print } END { print k }' "$name" > "$tmp" \
                || { echo "awk $name > $tmp failed" >&2; return 1; } ;;
        jq) jq --arg k "$key" '. + {($k): 1}' "$name" > "$tmp" \
                || { echo "jq $name > $tmp failed" >&2; return 1; } ;;
        sponge)
            jq --arg k "$key" '. + {($k): 1}' "$name" | sponge "$name" \
                || { echo "jq $name | sponge $name failed" >&2; return 1; }
            return 0 ;;
        *) echo "sh_real: unknown reader $reader" >&2; exit 2 ;;
    esac
    mv "$tmp" "$name" || { echo "mv $tmp $name failed" >&2; return 1; }
}

acknowledged=0 refused=0 max_us=0 t0=""
summary() {
    printf '{"writer":"%s","done":%d,"acknowledged":%d,"refused":%d,"torn":0,"max_cycle_ms":%d}\n' \
        "$id" "$i" "$acknowledged" "$refused" "$((max_us / 1000))"
}
# Killed by race.sh's timeout (SIGTERM): the cycle in progress counts toward the
# longest cycle, and the summary still goes out.
on_term() {
    local now=${EPOCHREALTIME/./}
    if [[ -n "$t0" ]] && (( now - t0 > max_us )); then max_us=$((now - t0)); fi
    summary
    echo "sh_real $id (pid $$) killed during cycle $i (SIGTERM)" >&2
    exit 143
}
trap on_term TERM
for ((i = 0; i < cycles; i++)); do
    key="$id-$i"
    t0=${EPOCHREALTIME/./}
    if one_cycle "$key"; then
        acknowledged=$((acknowledged + 1))
        if [[ -n "${LOCKFS_COMMIT_LOG:-}" ]]; then echo "$key" >> "$LOCKFS_COMMIT_LOG"; fi
    else
        refused=$((refused + 1))
        echo "sh_real $id (pid $$) cycle $i ($reader, $style temp) failed" >&2
    fi
    t1=${EPOCHREALTIME/./}
    if (( t1 - t0 > max_us )); then max_us=$((t1 - t0)); fi
done
t0=""
summary
if [[ $refused -gt 0 ]]; then
    echo "sh_real $id failed: $refused of $cycles cycles failed" >&2
    exit 1
fi
