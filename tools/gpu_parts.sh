# Sourced by the one-call GPU scripts (tools/gpu_multi.sh, tools/gpu_efficiency.sh): each part of the call
# runs under its own time limit so that the parts after it, and the summary, always get their turn.
# Needs OUT (with OUT/logs/), BUDGET (s for the whole call), GRACE (s between timeout's TERM and KILL) and
# SCRIPT (the name in the log lines); MIN_PART_S (default 30) is the least time worth starting a part with.
#   part NAME MAX RESERVE COMMAND...   COMMAND under timeout min(MAX, time left - RESERVE - GRACE) seconds,
#                                      output in OUT/logs/NAME.log; RESERVE is what the later parts need.
# Returns COMMAND's status (125 when skipped); sets failed=1 on a failure or time-out; RESULTS lists verdicts.
declare -a RESULTS=()
failed=0
say() { echo "[$SCRIPT $(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/summary.txt"; }
part() {
    local name=$1 max=$2 reserve=$3 log=$OUT/logs/$1.log
    shift 3
    local limit=$((BUDGET - SECONDS - reserve - GRACE))
    [ "$limit" -gt "$max" ] && limit=$max
    if [ "$limit" -lt "${MIN_PART_S:-30}" ]; then
        RESULTS+=("$name: SKIPPED (${limit}s left for it)")
        say "$name: skipped, ${limit}s left for it"
        return 125
    fi
    say "$name: up to ${limit}s: $*"
    local start=$SECONDS rc verdict=ok
    timeout -k "$GRACE" "$limit" "$@" >"$log" 2>&1
    rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        verdict="TIMED OUT after ${limit}s (lines written so far are kept)"
        failed=1
    elif [ "$rc" != 0 ]; then
        verdict="FAILED (exit $rc)"
        failed=1
    fi
    RESULTS+=("$name: $verdict, $((SECONDS - start))s")
    say "$name: $verdict, $((SECONDS - start))s (log: logs/$name.log)"
    return "$rc"
}
