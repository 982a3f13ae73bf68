"""launch/train.py with NaN losses injected, for fault-injection tests: the training forward of
rank NAN_RANK returns a NaN loss at its micro-batches listed in NAN_AT (0-based, comma-separated;
'N+' means N and every later one)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pixparse.tasks.base import TaskBase  # noqa: E402


def _bad(i: int) -> bool:
    for part in os.environ.get("NAN_AT", "").split(","):
        part = part.strip()
        if part.endswith("+") and i >= int(part[:-1]) or part.isdigit() and i == int(part):
            return True
    return False


_forward = TaskBase.forward
_calls = {"n": 0}


def forward(self, batch):
    out = _forward(self, batch)
    if self.training and int(os.environ.get("RANK", 0)) == int(os.environ.get("NAN_RANK", 0)):
        i = _calls["n"]
        _calls["n"] += 1
        if _bad(i):
            out = {**out, "loss": out["loss"] * torch.tensor(float("nan"))}
    return out


TaskBase.forward = forward

if __name__ == "__main__":
    from pixparse.app.train import main

    main()
