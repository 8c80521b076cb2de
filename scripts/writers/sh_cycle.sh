#!/usr/bin/env bash
# S5: the shell load-modify-save: `sed ... store > store.tmp && mv store.tmp store`.
# The store is a line file; each cycle appends the line ID-i with sed. The shell creates
# the temp file, sed reads the store, mv renames: three different processes.
#   sh_cycle.sh DIR STORE ID CYCLES [fixed|pid]
# fixed (default) uses STORE.tmp, as such scripts do; pid uses STORE.$$.tmp.
# A failing step (sed or mv) is printed and exits 1.
# LOCKFS_COMMIT_LOG (absolute path), if set: each committed line ID-i is appended to it
# after mv returned.
set -euo pipefail

if [[ $# -lt 4 ]]; then
    echo "usage: sh_cycle.sh DIR STORE ID CYCLES [fixed|pid]" >&2
    exit 2
fi
dir=$1 name=$2 id=$3 cycles=$4 style=${5:-fixed}
cd "$dir"
case "$style" in
    fixed) tmp="$name.tmp" ;;
    pid) tmp="$name.$$.tmp" ;;
    *) echo "sh_cycle: unknown temp style $style (fixed, pid)" >&2; exit 2 ;;
esac

for ((i = 0; i < cycles; i++)); do
    if ! sed "\$a $id-$i" "$name" > "$tmp"; then
        echo "sh_cycle $id (pid $$) failed at cycle $i: sed $name > $tmp" >&2
        exit 1
    fi
    if ! mv "$tmp" "$name"; then
        echo "sh_cycle $id (pid $$) failed at cycle $i: mv $tmp $name" >&2
        exit 1
    fi
    if [[ -n "${LOCKFS_COMMIT_LOG:-}" ]]; then
        echo "$id-$i" >> "$LOCKFS_COMMIT_LOG"
    fi
done
printf '{"writer":"%s","done":%d}\n' "$id" "$cycles"
