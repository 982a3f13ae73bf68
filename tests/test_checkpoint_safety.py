"""Checkpoints as an attacker sends them: no file runs code, no path leaves its folder, nothing
hangs. The payload is a pickle whose unpickling writes a marker file."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pixparse.engine import checkpoint
from pixparse.models.safe_load import check_checkpoint_files, restricted_torch_load

from tests.conftest import REPO


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tag(root, world_size=1, step=4):
    """A ZeRO tag with a real preset's assets, the marker file, plain-tensor model states and an
    optimizer shard (a stage-0 tag has none and is never converted)."""
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.pretrain import TaskReadPretrain

    tag = root / checkpoint.tag_for_step(step)
    TaskReadPretrain(TaskConfig(model_name="cruller_tiny")).save_assets(str(tag / "assets"))
    (tag / checkpoint.MARKER).write_text(json.dumps({"step": step, "world_size": world_size}))
    torch.save({"module": {"w": torch.zeros(2)}}, str(tag / "mp_rank_00_model_states.pt"))
    torch.save({"optimizer_state_dict": {}}, str(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    (root / checkpoint.LATEST).write_text(tag.name)
    return tag


@pytest.fixture
def one_rank_group(monkeypatch):
    from pixparse.engine.dist import free_port

    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    yield


@pytest.mark.parametrize("extra", ["assets/mp_rank_00_zz", "mp_rank_00_model_states.pt~", "zz.pt",
                                   "assets/tokenizer/.hidden.pt"])
def test_a_file_no_checkpoint_has_is_refused_by_name_before_any_conversion(tmp_path, one_rank_group, extra):
    """Finding 1: the world size in the marker routes a resume to ds_to_universal, which unpickles
    every 'mp_rank_*' file it finds. The extra file is refused by name; the payload never runs."""
    ckpt = tmp_path / "ckpt"
    tag = _tag(ckpt, world_size=7)
    marker = tmp_path / "pwned"
    torch.save(_Payload(str(marker)), str(tag / extra))
    with pytest.raises(ValueError, match=f"refusing checkpoint .*{os.path.basename(extra)}"):
        checkpoint.prepare_resume(str(ckpt), tag.name, world_size=1)
    assert not marker.exists() and not (ckpt / "universal").exists()


def test_the_conversion_subprocess_unpickles_only_through_the_restricted_unpickler(tmp_path):
    """Enforced at the load, not by a list: ds_to_universal run as pixparse runs it, on a tag whose
    optimizer file (which it opens first) carries the payload."""
    tag = tmp_path / "step_00000004"
    tag.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"optimizer_state_dict": _Payload(str(marker))}, str(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    proc = subprocess.run([sys.executable, "-m", "pixparse.models.safe_load", "--input_folder", str(tag),
                           "--output_folder", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "refusing to load" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_every_torch_load_inside_the_context_is_restricted_deepspeeds_included(tmp_path):
    from deepspeed.runtime.checkpoint_engine import torch_checkpoint_engine
    from deepspeed.utils import zero_to_fp32

    marker = tmp_path / "pwned"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"x": _Payload(str(marker))}, str(path))
    original = torch.load
    with restricted_torch_load():
        engine = torch_checkpoint_engine.TorchCheckpointEngine()
        with pytest.raises(ValueError, match="refusing to load .*mp_rank_00_model_states.pt"):
            engine.load(str(path))
        with pytest.raises(ValueError, match="refusing to load"):
            zero_to_fp32.torch.load(str(path), weights_only=False)
    assert torch.load is original and not marker.exists()
    torch.save({"w": torch.ones(2)}, str(path))
    with restricted_torch_load():
        assert torch.equal(torch.load(str(path), weights_only=False)["w"], torch.ones(2))


def test_a_failed_conversion_is_one_line_and_leaves_no_universal_tag(tmp_path, one_rank_group):
    """Finding 12: a failed universal conversion raised CalledProcessError."""
    ckpt = tmp_path / "ckpt"
    tag = _tag(ckpt, world_size=2)  # no real optimizer state: nothing for ds_to_universal to convert
    with pytest.raises(ValueError, match="converting .*step_00000004 to a universal checkpoint failed"):
        checkpoint.prepare_resume(str(ckpt), tag.name, world_size=1)
    assert not (ckpt / "universal" / tag.name).exists()


def test_an_existing_universal_folder_is_checked_dot_files_included(tmp_path, one_rank_group):
    """Finding 2: glob skips dot-files, DeepSpeed's universal loader lists the folder."""
    ckpt = tmp_path / "ckpt"
    tag = _tag(ckpt, world_size=2)
    out = ckpt / "universal" / tag.name
    (out / "zero" / "model.w").mkdir(parents=True)
    torch.save({"param": torch.zeros(2)}, str(out / "zero" / "model.w" / "fp32.pt"))
    (out / checkpoint.MARKER).write_text(json.dumps({"step": 4, "world_size": 2}))
    marker = tmp_path / "pwned"
    torch.save(_Payload(str(marker)), str(out / "zero" / "model.w" / ".cache.pt"))
    with pytest.raises(ValueError, match=r"refusing checkpoint .*\.cache\.pt"):
        checkpoint.prepare_resume(str(ckpt), tag.name, world_size=1)
    assert not marker.exists()


def test_glob_characters_in_checkpoint_paths_are_refused(tmp_path):
    """Finding 3: DeepSpeed globs the tag's path; c[k] matched the files of a sibling ck/."""
    from pixparse.engine.config import TrainConfig
    from pixparse.models.export import checkpoint_state_dict

    tag = _tag(tmp_path / "c[k]")
    with pytest.raises(ValueError, match="glob"):
        checkpoint.resolve_resume(str(tag), str(tmp_path / "c[k]"))
    with pytest.raises(ValueError, match="glob"):
        checkpoint_state_dict(str(tag))
    with pytest.raises(ValueError, match="--train.experiment 'br\\[1\\]' contains a glob character"):
        TrainConfig(experiment="br[1]")


@pytest.mark.parametrize("latest", ["../../notes", "/tmp", "step_00000004/..", ""])
def test_latest_must_name_a_tag_beside_it(tmp_path, latest):
    """Finding 4: `latest` was followed out of the checkpoint folder on resume."""
    from pixparse.models.export import resolve_checkpoint_path

    ckpt = tmp_path / "runs" / "exp" / "checkpoints"
    _tag(ckpt)
    notes = tmp_path / "runs" / "exp" / "notes"
    notes.mkdir()
    (notes / "precious.txt").write_text("keep")
    (ckpt / checkpoint.LATEST).write_text(latest)
    with pytest.raises(ValueError, match="latest"):
        checkpoint.resolve_resume("latest", str(ckpt))
    with pytest.raises(ValueError, match="latest"):
        resolve_checkpoint_path(str(ckpt))
    assert (notes / "precious.txt").read_text() == "keep"


def test_self_links_in_a_tag_are_refused_at_once(tmp_path):
    """Finding 5: two self-links made the recursive glob loop forever."""
    tag = _tag(tmp_path / "ckpt")
    os.symlink(".", tag / "l1")
    os.symlink(".", tag / "l2")
    with pytest.raises(ValueError, match="symbolic link"):
        check_checkpoint_files(str(tag))


def test_a_linked_universal_folder_is_not_converted_into(tmp_path, one_rank_group):
    """Nothing is written or deleted outside the checkpoint folder through a link."""
    ckpt = tmp_path / "ckpt"
    tag = _tag(ckpt, world_size=2)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / tag.name).mkdir(parents=True)
    (elsewhere / tag.name / "precious.txt").write_text("keep")
    os.symlink(elsewhere, ckpt / "universal")
    with pytest.raises(ValueError, match="symbolic link"):
        checkpoint.prepare_resume(str(ckpt), tag.name, world_size=1)
    assert (elsewhere / tag.name / "precious.txt").read_text() == "keep"


class _BadNumpy:
    """Pickles as an allowed global (numpy's array reconstruction) called with wrong arguments."""

    def __reduce__(self):
        import numpy as np

        return (np._core.multiarray._reconstruct, ("not a type", (0,), b"b"))


def test_malformed_pickles_give_one_line_naming_the_file(tmp_path):
    """Finding 12: a malformed numpy pickle in a tag raised a bare TypeError, unnamed."""
    from pixparse.models.safe_load import safe_torch_load

    path = tmp_path / "rng_state_rank0.pt"
    torch.save({"numpy": _BadNumpy()}, str(path))
    with pytest.raises(ValueError, match="cannot read .*rng_state_rank0.pt: TypeError"):
        safe_torch_load(str(path))
