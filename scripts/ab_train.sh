#!/usr/bin/env bash
# A lever, measured as a user waits for it: `ignite-mnist train --max-epochs 1` of this checkout against
# another checkout's (e.g. `git worktree add /tmp/before HEAD~1`), whole processes, alternating, each on a
# fresh experiment made by an untimed `init`; wall time, peak RSS and page faults of each run,
# then the medians (GNU time).
#   scripts/ab_train.sh /tmp/before [pairs=4] [data-path=/usr/share/datasets/fashion-mnist] [dataset=fashion-mnist]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
other=$(cd "${1:?usage: $0 OTHER_CHECKOUT [pairs] [data-path] [dataset]}" && pwd)
pairs=${2:-4}
data_path=${3:-/usr/share/datasets/fashion-mnist}
dataset=${4:-fashion-mnist}
python="$here/.venv/bin/python"
[ -x /usr/bin/time ] || { echo "error: needs GNU time (Debian: apt-get install time)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"  # python -m puts the current folder first on sys.path, before PYTHONPATH: not a checkout
for _ in $(seq "$pairs"); do
  for side in other this; do
    checkout=$other; [ "$side" = this ] && checkout=$here
    cli=(env PYTHONPATH="$checkout" "$python" -m ignite_mnist --experiments-path "$work/$side" --data-path "$data_path" -e x)
    rm -rf "$work/$side"
    "${cli[@]}" init --set data.dataset="$dataset" --set data.val_split=0 >"$work/log" 2>&1 ||
      { echo "error: $side's init failed ($checkout):" >&2; tail -n 5 "$work/log" >&2; exit 1; }
    # GNU time: elapsed seconds, peak RSS in KiB, minor page faults
    /usr/bin/time -f "$side %e %M %R" -o "$work/time" "${cli[@]}" train --max-epochs 1 --device cpu >"$work/log" 2>&1 ||
      { echo "error: $side's train failed ($checkout):" >&2; tail -n 5 "$work/log" >&2; exit 1; }
    tee -a "$work/all" <"$work/time"
  done
done
"$python" - "$work/all" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, seconds, kib, faults = line.split()
    runs.setdefault(side, []).append((float(seconds), int(kib) / 1024, int(faults)))
med = {side: [statistics.median(run[k] for run in r) for k in range(3)] for side, r in runs.items()}
for side in ("other", "this"):
    print(f"{side}: median {med[side][0]:.1f} s, peak RSS {med[side][1]:.0f} MiB, {med[side][2]:,} page faults")
print(f"this / other: {med['this'][0] / med['other'][0]:.2f}x time")
PY
