"""The tests' launcher for multi-rank runs that test the engine rather than a launcher:
starts NPROC copies of SCRIPT on this machine with the environment torchrun gives its ranks
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). It imports no
torch, so a launch costs only the ranks' own start (the deepspeed runner and launch.py import
torch and DeepSpeed one after the other before any rank starts). The ranks share this process's
stdout and stderr; the first rank to fail ends the others, and the exit status is its own.

    python tests/helpers/spawn_ranks.py NPROC PORT SCRIPT [ARGS...]
"""
import os
import signal
import subprocess
import sys
import time


def main(nproc: int, port: int, script: str, args: list[str]) -> int:
    ranks = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen([sys.executable, "-u", script, *args], env=env))

    def forward(signum, _frame):
        for p in ranks:
            if p.poll() is None:
                p.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, forward)
    while True:
        codes = [p.poll() for p in ranks]
        failed = [c for c in codes if c not in (None, 0)]
        if failed or all(c == 0 for c in codes):
            break
        time.sleep(0.05)
    if failed:
        for p in ranks:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 15
        for p in ranks:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
        return failed[0]
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]))
