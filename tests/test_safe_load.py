"""Checkpoint pickles that could run code are refused before anything unpickles them."""
import json
import os

import pytest
import torch

from pixparse.models.safe_load import check_checkpoint_files, safe_torch_load


class _Payload:
    """Unpickling this calls open(<marker>, 'w'): stands in for any code an attacker wants run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_tag(tmp_path):
    """A checkpoint tag that looks complete but whose model states carry a payload."""
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.pretrain import TaskReadPretrain

    tag = tmp_path / "ckpt" / "step_00000004"
    TaskReadPretrain(TaskConfig(model_name="cruller_tiny")).save_assets(str(tag / "assets"))
    (tag / "pixparse_state.json").write_text(json.dumps({"step": 4, "world_size": 1}))
    marker = str(tmp_path / "pwned")
    torch.save({"module": {"w": torch.zeros(2)}, "extra": _Payload(marker)},
               str(tag / "mp_rank_00_model_states.pt"))
    return tag, marker


def test_crafted_checkpoint_is_refused_by_export_and_resume(tmp_path):
    from pixparse.app.export import export
    from pixparse.engine.checkpoint import resolve_resume

    tag, marker = _crafted_tag(tmp_path)
    with pytest.raises(ValueError, match="refusing to load .*mp_rank_00_model_states.pt"):
        export(str(tag), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="could run code"):
        resolve_resume(str(tag), str(tmp_path / "ckpt"))
    assert not os.path.exists(marker), "the payload ran"


def test_plain_tensors_and_rng_states_load(tmp_path):
    from pixparse.engine.checkpoint import rng_state

    torch.save(rng_state(), str(tmp_path / "rng_state_rank0.pt"))
    torch.save({"module": {"w": torch.ones(3)}, "param_shapes": [{"w": torch.Size([3])}]},
               str(tmp_path / "mp_rank_00_model_states.pt"))
    assert check_checkpoint_files(str(tmp_path)) == 2
    assert torch.equal(safe_torch_load(str(tmp_path / "mp_rank_00_model_states.pt"))["module"]["w"], torch.ones(3))


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read .*x.pt"):
        safe_torch_load(str(path))
