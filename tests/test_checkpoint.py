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
