"""launch/train.py that saves a checkpoint right after resuming and exits: what was loaded is
written back at the new world size, to be compared with what was saved (elastic-resume tests)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pixparse.engine.train import Trainer  # noqa: E402

_resume = Trainer.resume


def resume(self, source):
    _resume(self, source)
    self.save()
    sys.exit(0)


Trainer.resume = resume

if __name__ == "__main__":
    from pixparse.app.train import main

    main()
