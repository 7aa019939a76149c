#!/usr/bin/env python3
"""Resident memory of a process by kind of mapping, from /proc/PID/smaps:

  heap    glibc's main arena (the [heap] of brk)
  arenas  glibc's thread arenas (anonymous read-write heaps aligned to 64 MiB)
  anon    other anonymous mappings (large blocks malloc mmaps, thread stacks)
  file    mapped files (the binary, libraries)

`arenas.py PID` prints one JSON object; `arenas.py --watch PID` samples every 0.2 s until the
process ends (or this script gets SIGTERM/SIGINT) and prints the sample with the largest total.
"""
import json, re, signal, sys, time

ARENA = 64 << 20


def sample(pid):
    tot = {"heap": 0, "arenas": 0, "anon": 0, "file": 0}
    arenas = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$", line)
            if m:
                start = int(m.group(1), 16)
                name = m.group(5).strip()
                if name == "[heap]":
                    kind = "heap"
                elif name == "" and start % ARENA == 0 and m.group(3).startswith("rw"):
                    kind = "arenas"
                elif name == "" or name.startswith("[stack"):
                    kind = "anon"
                else:
                    kind = "file"
                cur = kind
                continue
            if line.startswith("Rss:") and cur:
                kb = int(line.split()[1])
                tot[cur] += kb
                if cur == "arenas":
                    arenas.append(kb)
    out = {f"{k}_mib": round(v / 1024, 1) for k, v in tot.items()}
    out["total_mib"] = round(sum(tot.values()) / 1024, 1)
    out["arena_heaps"] = len(arenas)
    out["arena_heaps_mib"] = [round(a / 1024, 1) for a in sorted(arenas, reverse=True)]
    return out


def main():
    if sys.argv[1] != "--watch":
        print(json.dumps(sample(sys.argv[1])))
        return
    pid = sys.argv[2]
    best = None
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        try:
            s = sample(pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        if best is None or s["total_mib"] > best["total_mib"]:
            best = s
        time.sleep(0.2)
    print(json.dumps(best))


main()
