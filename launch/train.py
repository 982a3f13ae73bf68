"""DeepSpeed/torchrun entry: `deepspeed launch/train.py --deepspeed_config ds_configs/... ...`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pixparse.app.train import main  # noqa: E402

if __name__ == "__main__":
    main()
