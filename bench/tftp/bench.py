#!/usr/bin/env python3
"""TFTP benchmark: pxeforge vs tftpd-hpa vs dnsmasq vs atftpd on loopback, same files, real
clients.

Run through bench/tftp/run.sh, which builds pxeforge's TFTP server in release mode, unpacks
atftpd from its Debian package, and runs this inside a private network namespace (dnsmasq's
TFTP port is fixed at 69).

The single-file rows run up to three times in each repeat:
- on the quiet machine;
- "+ CPU hog": `--hog` busy-loop processes (one per core by default) run beside every server's
  transfers, on any core, client included;
- "+ CPU hog on the server's core" (machines with 2 or more cores): the server's threads and one
  busy loop share the last core, and the client has the first to itself. A client on the rack is
  another machine, which a hog on the boot server does not slow; with the client pinned away, a
  row measures how fast the server answers while it fights for its core, without the luck of
  where the scheduler puts the client (the unpinned rows flip between 0.5 s and 2 s from one
  repeat to the next, for every server).
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1024 * 1024


def write_random(path, size):
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, MiB))
            f.write(chunk)
            remaining -= len(chunk)
    os.chmod(path, 0o644)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_pids(root_pid):
    """The pid and all its descendants (tftpd-hpa forks one child per transfer)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak of the summed RSS of a server's process tree, sampled every 10 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            total = sum(status_kib(p, "VmRSS") for p in tree_pids(self.pid))
            self.peak_kib = max(self.peak_kib, total)
            time.sleep(0.01)

    def finish(self):
        self.stop.set()
        self.join()
        # VmHWM catches a peak between two samples for single-process servers.
        return max(self.peak_kib, status_kib(self.pid, "VmHWM"))


class Server:
    def __init__(self, name, argv, port, ready):
        self.name, self.argv, self.port, self.ready = name, argv, port, ready
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.ready(self.port):
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start: {self.argv}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def port_ready(root):
    def ready(port):
        out = subprocess.run(
            ["curl", "-s", "--max-time", "1", "-o", "/dev/null", f"tftp://127.0.0.1:{port}/probe"],
            timeout=10,
        )
        return out.returncode == 0

    return ready


class Hog:
    """`n` busy-loop processes (sh `while :`), for the contended rows; on `cpus` if given."""

    def __init__(self, n, cpus=None):
        self.n, self.cpus, self.procs = n, cpus, []

    def __enter__(self):
        self.procs = [
            subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(self.n)
        ]
        if self.cpus is not None:
            for p in self.procs:
                os.sched_setaffinity(p.pid, self.cpus)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def pin_tree(pid, cpus):
    """Every thread of a server's process tree onto `cpus` (sched_setaffinity acts on one
    thread; threads and children created later inherit their creator's set)."""
    for p in tree_pids(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # the thread or child ended meanwhile


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def timed(argv, out_path, expect):
    start = time.monotonic()
    rc = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode
    elapsed = time.monotonic() - start
    ok = rc == 0 and os.path.exists(out_path) and sha256(out_path) == expect
    if os.path.exists(out_path):
        os.unlink(out_path)
    return elapsed, ok


def single_rows(port, out):
    url = f"tftp://127.0.0.1:{port}/big32"
    return {
        "32 MiB, blksize 512 (curl)": [
            "curl", "-s", "--max-time", "300", "--tftp-blksize", "512", "-o", out, url,
        ],
        "32 MiB, blksize 1468 (curl)": [
            "curl", "-s", "--max-time", "300", "--tftp-blksize", "1468", "-o", out, url,
        ],
        "32 MiB, blksize 1468 windowsize 16 (atftp)": [
            "atftp", "--option", "blksize 1468", "--option", "windowsize 16",
            "-g", "-r", "big32", "-l", out, "127.0.0.1", str(port),
        ],
    }


def storm_clients(port, out):
    """Client command lines of each storm: curl in lockstep, and atftp asking what UEFI
    firmware asks (OVMF's PXE client sends blksize 1468 windowsize 4)."""
    url = f"tftp://127.0.0.1:{port}/ipxe.efi"
    return {
        "curl, blksize 1468": [
            "curl", "-s", "--max-time", "120", "--tftp-blksize", "1468", "-o", out, url,
        ],
        "atftp, blksize 1468 windowsize 4": [
            "atftp", "--option", "blksize 1468", "--option", "windowsize 4",
            "-g", "-r", "ipxe.efi", "-l", out, "127.0.0.1", str(port),
        ],
    }


def storm(argv_for, work, sums, clients):
    """Starts `clients` fetches at once; returns (seconds until the last ends, failures)."""
    outdir = os.path.join(work, "storm")
    os.makedirs(outdir, exist_ok=True)
    start = time.monotonic()
    procs = []
    for i in range(clients):
        out = os.path.join(outdir, str(i))
        procs.append(
            (out, subprocess.Popen(argv_for(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        )
    failures = 0
    for out, p in procs:
        if p.wait() != 0:
            failures += 1
    elapsed = time.monotonic() - start
    for out, p in procs:
        if p.returncode == 0 and (not os.path.exists(out) or sha256(out) != sums["ipxe.efi"]):
            failures += 1
    shutil.rmtree(outdir)
    return elapsed, failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pxeforge", required=True, help="tftp-serve binary (release)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--storm-repeats", type=int, default=2)
    ap.add_argument("--atftpd", help="atftpd binary (unpacked from its .deb); none: no atftpd")
    ap.add_argument(
        "--hog", type=int, default=os.cpu_count() or 2,
        help="busy-loop processes during the contended rows (0: no contended rows)",
    )
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="pxf-tftp-bench-")
    root = os.path.join(work, "root")
    os.makedirs(root)
    os.chmod(work, 0o755)
    os.chmod(root, 0o755)
    write_random(os.path.join(root, "big32"), 32 * MiB)
    write_random(os.path.join(root, "ipxe.efi"), 1 * MiB)
    write_random(os.path.join(root, "probe"), 16)
    sums = {n: sha256(os.path.join(root, n)) for n in ("big32", "ipxe.efi")}

    ready = port_ready(root)
    servers = [
        Server("pxeforge", [args.pxeforge, root, "127.0.0.1:6970"], 6970, ready),
        Server("tftpd-hpa", ["in.tftpd", "-L", "-s", root, "-a", "127.0.0.1:6969"], 6969, ready),
        Server(
            "dnsmasq",
            [
                "dnsmasq", "-d", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                f"--tftp-root={root}", "--tftp-max=1000", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--pid-file=", "--quiet-tftp", "--log-facility=/dev/null",
            ],
            69,
            ready,
        ),
    ]
    if args.atftpd:
        servers.append(
            Server(
                "atftpd",
                [
                    args.atftpd, "--daemon", "--no-fork", "--user", "root", "--group", "root",
                    "--port", "6971", "--bind-address", "127.0.0.1", "--logfile", "/dev/null",
                    "--maxthread", "1000", root,
                ],
                6971,
                ready,
            )
        )

    # Runs are interleaved (each repeat visits the servers in a rotated order) so that load
    # from elsewhere on the machine falls on every server alike; each cell is a median.
    names = [s.name for s in servers]
    times = {n: {} for n in names}
    fails = {n: {} for n in names}
    peaks = {n: 0 for n in names}
    storm_kinds = list(storm_clients(0, "").keys())
    out = os.path.join(work, "out")
    load = {"start": loadavg()}
    all_cpus = os.sched_getaffinity(0)
    rounds = [(0, False)]
    if args.hog:
        rounds.append((args.hog, False))
    if args.hog and len(all_cpus) >= 2:
        # The last core for the server and one busy loop, the others for the client.
        server_cpus = {max(all_cpus)}
        client_cpus = ",".join(str(c) for c in sorted(all_cpus - server_cpus))
        rounds.append((1, True))
    try:
        for s in servers:
            s.start()
        for r in range(args.repeats):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            # Quiet, then contended: the hog runs through every server's transfers alike.
            for mode in rounds:
                hog, pinned = mode
                with Hog(hog, server_cpus if pinned else None):
                    for s in order:
                        suffix = ""
                        if hog:
                            suffix = " + CPU hog on the server's core" if pinned else " + CPU hog"
                        print(f"== repeat {r + 1}: {s.name}{suffix}", file=sys.stderr, flush=True)
                        if pinned:
                            pin_tree(s.proc.pid, server_cpus)
                        for label, argv in single_rows(s.port, out).items():
                            if pinned:
                                argv = ["taskset", "-c", client_cpus] + argv
                            label = f"{label}{suffix}"
                            elapsed, ok = timed(argv, out, sums["big32"])
                            times[s.name].setdefault(label, []).append(elapsed)
                            fails[s.name][label] = fails[s.name].get(label, 0) + (0 if ok else 1)
                        if pinned:
                            pin_tree(s.proc.pid, all_cpus)
        for s in servers:
            s.stop()
        # Fresh processes for the storms, so that peak memory is the storms'.
        for s in servers:
            s.start()
        for r in range(args.storm_repeats):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                for kind in storm_kinds:
                    label = f"storm: {args.clients} x 1 MiB ({kind})"
                    print(f"== storm {r + 1}: {s.name}: {kind}", file=sys.stderr, flush=True)
                    sampler = RssSampler(s.proc.pid)
                    sampler.start()

                    def argv_for(out, port=s.port, kind=kind):
                        return storm_clients(port, out)[kind]

                    elapsed, failures = storm(argv_for, work, sums, args.clients)
                    peaks[s.name] = max(peaks[s.name], sampler.finish())
                    times[s.name].setdefault(label, []).append(elapsed)
                    fails[s.name][label] = fails[s.name].get(label, 0) + failures
    finally:
        for s in servers:
            if s.proc and s.proc.poll() is None:
                s.stop()
        shutil.rmtree(work, ignore_errors=True)
    load["end"] = loadavg()
    results = {
        n: (
            {
                label: (statistics.median(ts), ts, fails[n][label])
                for label, ts in times[n].items()
            },
            peaks[n],
        )
        for n in names
    }

    names = [s.name for s in servers]
    labels = list(results[names[0]][0].keys())
    print(
        f"Each cell: median of {args.repeats} runs ({args.storm_repeats} for the storm), "
        "servers interleaved; failures are non-zero exits or wrong bytes. "
        f"'+ CPU hog': {args.hog} busy-loop processes ran beside every server's transfers; "
        "'+ CPU hog on the server's core': the server and one busy loop shared the last core, "
        "the client had the others. "
        f"Load average {load['start']} at start, {load['end']} at end; {os.cpu_count()} cores."
    )
    print()
    print(f"| row | {' | '.join(names)} | best peer / pxeforge (spread) |")
    print(f"|---|{'---|' * len(names)}---|")
    for label in labels:
        cells = []
        for n in names:
            t, _, f = results[n][0][label]
            cells.append(f"{t:.2f} s" + (f" ({f} failed)" if f else ""))
        ours = results["pxeforge"][0][label]
        peers = [results[n][0][label] for n in names if n != "pxeforge"]
        ratio = min(p[0] for p in peers) / ours[0]
        # Spread: the ratio within each repeat (the servers' runs of one repeat are minutes
        # apart at most, so they saw about the same load), lowest and highest.
        per_repeat = [
            min(p[1][i] for p in peers) / ours[1][i] for i in range(len(ours[1]))
        ]
        lo_ratio, hi_ratio = min(per_repeat), max(per_repeat)
        verdict = "tie" if abs(ratio - 1) < 0.03 else ("faster" if ratio > 1 else "slower")
        print(f"| {label} | {' | '.join(cells)} | {ratio:.2f}x ({verdict}; {lo_ratio:.2f}-{hi_ratio:.2f}) |")
    if args.storm_repeats:
        mem_row(results, names)
    print()
    print("Every run, in repeat order (seconds):")
    print()
    for label in labels:
        runs = "; ".join(
            f"{n} " + " ".join(f"{t:.2f}" for t in results[n][0][label][1]) for n in names
        )
        print(f"- {label}: {runs}")


def mem_row(results, names):
    mem = [f"{results[n][1] / 1024:.1f} MiB" for n in names]
    ours = results["pxeforge"][1]
    best = min(results[n][1] for n in names if n != "pxeforge")
    verdict = "less" if best > ours else "more"
    print(
        f"| storm: server peak RSS (process tree) | {' | '.join(mem)} "
        f"| {best / ours:.2f}x ({verdict}) |"
    )


if __name__ == "__main__":
    main()
