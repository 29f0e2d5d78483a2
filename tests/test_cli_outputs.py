"""ase_eqgnn.outputs: output files that appear complete or not at all, and the checks before a run."""

import os
import stat

import pytest

from ase_eqgnn.outputs import OutputFiles, check_output_path, write_text


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_nothing_appears_until_commit_and_a_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with OutputFiles() as outputs:
            outputs.add(path, "log", (".csv",))
            tmp = outputs.start(path)
            assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".csv")
            with open(tmp, "w") as f:
                f.write("half a ro")
            raise RuntimeError("the run failed")
    assert path.read_text() == "old\n" and listing(tmp_path) == ["log.csv"]
    with OutputFiles() as outputs:
        outputs.add(path, "log")
        with open(outputs.start(path), "w") as f:
            f.write("new\n")
        assert path.read_text() == "old\n"
        assert outputs.commit() == [str(path)]
    assert path.read_text() == "new\n" and listing(tmp_path) == ["log.csv"]


def test_commit_of_some_outputs_discards_the_others(tmp_path):
    keep, drop = tmp_path / "a.traj", tmp_path / "b.xyz"
    drop.write_text("earlier\n")
    with OutputFiles() as outputs:
        for p in (keep, drop):
            outputs.add(p)
            with open(outputs.start(p), "w") as f:
                f.write("new\n")
        outputs.commit([keep])
    assert keep.read_text() == "new\n" and drop.read_text() == "earlier\n"
    assert listing(tmp_path) == ["a.traj", "b.xyz"]


def test_missing_folders_are_made_and_removed_again_on_failure(tmp_path):
    deep = tmp_path / "runs" / "a" / "md.traj"
    with OutputFiles() as outputs:
        outputs.add(deep)
        outputs.start(deep)
        assert (tmp_path / "runs" / "a").is_dir()
    assert listing(tmp_path) == []
    with OutputFiles() as outputs:
        outputs.add(deep)
        open(outputs.start(deep), "w").close()
        outputs.commit()
    assert listing(tmp_path) == ["runs", "runs/a", "runs/a/md.traj"]


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "shared.csv"
    path.write_text("old\n")
    os.chmod(path, 0o664)
    write_text(path, "new\n")
    assert path.read_text() == "new\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o664
    fresh = tmp_path / "fresh.json"
    write_text(fresh, "{}\n")
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o644


@pytest.mark.parametrize("name, setup, message", [
    ("", None, "empty"),
    ("out.dcd", None, "extension '.dcd'"),
    ("folder", "mkdir", "is a folder"),
    ("file/out.csv", "file", "not a folder"),
    ("input.csv", "input", "also an input"),
    ("twice.csv", "twice", "same file"),
])
def test_bad_output_paths_are_refused_before_anything_is_written(tmp_path, name, setup, message):
    outputs = OutputFiles(inputs=[tmp_path / "input.csv"])
    if setup == "mkdir":
        (tmp_path / "folder").mkdir()
    if setup == "file":
        (tmp_path / "file").write_text("a file\n")
    if setup == "twice":
        outputs.add(tmp_path / "twice.csv", "log")
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=message):
        outputs.add(str(tmp_path / name) if name else "", "log", (".csv",))
    assert listing(tmp_path) == before


def test_the_same_file_by_another_name_is_still_the_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    outputs = OutputFiles(inputs=["sub/start.traj"])
    with pytest.raises(ValueError, match="also an input"):
        outputs.add(str(tmp_path / "sub" / "start.traj"))
    outputs.add("sub/../md.csv")
    with pytest.raises(ValueError, match="same file"):
        outputs.add(str(tmp_path / "md.csv"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write anywhere")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        with pytest.raises(ValueError, match="no write permission"):
            check_output_path(locked / "md.traj", "trajectory")
    finally:
        os.chmod(locked, 0o755)


def test_a_promoted_stream_is_in_place_while_it_is_written_and_kept_on_failure(tmp_path):
    path = tmp_path / "md.csv"
    path.write_text("earlier\n")
    with pytest.raises(RuntimeError):
        with OutputFiles() as outputs:
            outputs.add(path, "log")
            with open(outputs.start(path), "w") as f:
                f.write("row 0\n")
                f.flush()
                outputs.promote(path)  # the run has really started
                f.write("row 1\n")
                f.flush()
                assert path.read_text() == "row 0\nrow 1\n"
                raise RuntimeError("cut off")
    assert path.read_text() == "row 0\nrow 1\n" and listing(tmp_path) == ["md.csv"]
