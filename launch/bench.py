"""DeepSpeed/torchrun entry for `pixparse bench`: `deepspeed launch/bench.py --deepspeed_config ... --synthetic_data true`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pixparse.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
