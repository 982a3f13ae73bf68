import pytest

from pixparse.engine.checkpoint import MARKER, list_complete_tags, resolve_resume


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "step_00000004").mkdir()
    (tmp_path / "latest").write_text("step_00000004")
    with pytest.raises(ValueError, match="incomplete"):
        resolve_resume("latest", str(tmp_path))


def test_latest_resolves_only_complete_tags(tmp_path):
    for step in (4, 8):
        (tmp_path / f"step_{step:08d}").mkdir()
    (tmp_path / "step_00000004" / MARKER).write_text("{}")
    assert list_complete_tags(str(tmp_path)) == ["step_00000004"]
    (tmp_path / "latest").write_text("step_00000004")
    assert resolve_resume("latest", str(tmp_path)) == (str(tmp_path), "step_00000004")
    with pytest.raises(ValueError, match="no .*latest"):
        resolve_resume("latest", str(tmp_path / "nothing"))


def _tags(tmp_path, *steps):
    for step in steps:
        (tmp_path / f"step_{step:08d}").mkdir()
        (tmp_path / f"step_{step:08d}" / MARKER).write_text("{}")


def test_prune_keeps_the_newest_k_up_to_the_current_tag(tmp_path):
    from pixparse.engine.checkpoint import prune

    _tags(tmp_path, 10, 20, 30, 40)
    assert prune(str(tmp_path), "step_00000040", 2) == ["step_00000010", "step_00000020"]
    assert list_complete_tags(str(tmp_path)) == ["step_00000030", "step_00000040"]


def test_rollback_save_never_prunes_the_tag_just_saved(tmp_path):
    """Resumed from step 10 while 20 and 30 exist, then saved step 15 with keep_last_k 1: step 15
    must survive (it is what 'latest' names); the later tags are left, not this run's to delete."""
    from pixparse.engine.checkpoint import prune

    _tags(tmp_path, 10, 15, 20, 30)
    assert prune(str(tmp_path), "step_00000015", 1) == ["step_00000010"]
    assert list_complete_tags(str(tmp_path)) == ["step_00000015", "step_00000020", "step_00000030"]


def test_partial_tags_are_cleaned_and_never_listed(tmp_path):
    from pixparse.engine.checkpoint import PARTIAL, clean_partial

    _tags(tmp_path, 10)
    (tmp_path / f"step_00000020{PARTIAL}").mkdir()
    (tmp_path / f"step_00000020{PARTIAL}" / MARKER).write_text("{}")
    assert list_complete_tags(str(tmp_path)) == ["step_00000010"]
    assert clean_partial(str(tmp_path)) == [f"step_00000020{PARTIAL}"]
    assert not (tmp_path / f"step_00000020{PARTIAL}").exists()


def _tag_with(tmp_path, files, world_size):
    """A complete tag holding these files, each a pickled empty dict."""
    import json

    import torch

    tag = tmp_path / "step_00000008"
    tag.mkdir(parents=True)
    for name in files:
        torch.save({}, tag / name)
    (tag / MARKER).write_text(json.dumps({"world_size": world_size}))
    return str(tmp_path), tag.name


def test_a_tag_resumes_only_under_the_zero_kind_it_was_written_with(tmp_path):
    """A ZeRO tag (per-rank optimizer shards) under stage 0, or a stage-0 tag (the whole optimizer
    in the model states) under ZeRO, is one line naming both, before any process group."""
    from pixparse.engine.checkpoint import check_resume_stage

    zero = _tag_with(tmp_path / "z", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"], 2)
    plain = _tag_with(tmp_path / "p", ["mp_rank_00_model_states.pt"], 2)
    check_resume_stage(*zero, 2)
    check_resume_stage(*zero, 3)
    check_resume_stage(*plain, 0)
    with pytest.raises(ValueError, match=r"written with ZeRO \(stage 1-3\) and this run has ZeRO stage 0"):
        check_resume_stage(*zero, 0)
    with pytest.raises(ValueError, match=r"written without ZeRO \(stage 0\) and this run has ZeRO stage 2; resume "
                                         r"with a --deepspeed_config of zero_optimization.stage 0"):
        check_resume_stage(*plain, 2)


def test_a_stage_0_tag_loads_as_it_is_on_another_world_size(tmp_path):
    """No universal conversion for a stage-0 tag (nothing is sharded): DeepSpeed loads its
    mp_rank_00_model_states.pt on any number of ranks."""
    from pixparse.engine.checkpoint import prepare_resume

    ckpt_dir, tag = _tag_with(tmp_path, ["mp_rank_00_model_states.pt"], 2)
    source = prepare_resume(ckpt_dir, tag, 1)
    assert not source.universal and source.load_dir == ckpt_dir and source.state["world_size"] == 2
