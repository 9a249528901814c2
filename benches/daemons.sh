# Shared by the benches that start daemons of their own (models.sh, models_memory.sh): source
# it after setting BIN and `dir` (a temp directory the daemons' sockets, logs and weights cache
# go in).

# Starts `serve` with the given arguments on socket $1, logging to $1.log, and waits until it
# is ready; prints its pid. Its stdout is closed: this runs in a command substitution, which
# waits for its pipe to close.
serve() {
    local sock=$1
    shift
    CACHE_DIRECTORY="$dir/cache" "$BIN" serve --uds "$sock" "$@" >/dev/null 2>"$sock.log" &
    local pid=$!
    for _ in $(seq 1200); do
        grep -q ready "$sock.log" 2>/dev/null && [[ -S $sock ]] && break
        sleep 0.05
    done
    echo "$pid"
}

# Stops the daemons given (started in command substitutions, so not the caller's children)
# and waits until they are gone.
stop() {
    kill "$@" 2>/dev/null || true
    for p in "$@"; do
        while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
    done
}

# CPU seconds (user + system) of the pids given.
cpu() {
    python3 - "$@" <<'EOF'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    total += int(f[11]) + int(f[12])
print(total / tick)
EOF
}

# Private_Dirty, Pss and Rss in MiB, summed over the pids given. Private_Dirty is what the
# processes cost on their own (heap, stacks), Pss everything with shared pages split between
# their sharers. Not Private_Clean: the weights are mapped from the cache file, whose pages
# count as private to a process only while no other maps them, which would charge one daemon
# with two models for what two daemons share.
memory() {
    python3 - "$@" <<'EOF'
import sys
t = {"Private_Dirty": 0, "Pss": 0, "Rss": 0}
for pid in sys.argv[1:]:
    for line in open(f"/proc/{pid}/smaps_rollup"):
        k, v = line.split(":", 1)
        if k in t:
            t[k] += int(v.split()[0])
print(" ".join(str(round(t[k] / 1024, 1)) for k in ("Private_Dirty", "Pss", "Rss")))
EOF
}
