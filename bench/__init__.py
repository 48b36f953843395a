"""berthd's benchmarks: `make bench` (`python -m bench`) prints figures, never pass/fail on timings.

Each benchmark measures berthd and a baseline in the same run and prints both, their ratio and the
issue's goal. The servers run as their own processes on UNIX sockets in a temp dir (`processes`); the
clients are the least code that can send a line and read the answer (`clients`).

    latency       `ping` round trips: berthd vs a bare trio echo server and a dokku-daemon-style socat+bash
    throughput    64 concurrent connections: `ping`, and `apps:create`/`apps:destroy`
    startup       process start to accepting connections
    memory        idle RSS after start (and after the load benchmarks)
    fairness      one uid's `ping` round trips, idle and while another uid floods commands (as root)
    access-rules  `ping` round trips of a caller other than root with 50 access rules vs none (as root)

and the native runner's, each with a berthd of its own:

    run          `run APP` of /bin/true, request to final answer, vs `subprocess.run` in the bench
    log-capture  200 MB of lines from a supervised child into berthd's logs vs `writer > file`
    supervision  200 supervised processes: start, status, stop and memory, berthd vs supervisord
"""
