"""Writing results: files appear whole or not at all; output folders are checked before work."""
import csv
import json
import os
import stat

import pytest

from mapa_vae.files import (atomic_write, check_output_folder, save_figure, write_csv,
                            write_json, write_text)


def _half_then_fail(error):
    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write("half of a res")
        raise error
    return write


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "new" / "result.txt"
    with pytest.raises(type(error)):
        atomic_write(path, _half_then_fail(error))
    assert not path.exists()
    assert list((tmp_path / "new").iterdir()) == []  # the folder was made, nothing left in it


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path):
    path = write_text(tmp_path / "result.txt", "the whole previous result\n")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, _half_then_fail(OSError("disk full")))
    assert path.read_text() == "the whole previous result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_a_written_file_has_the_mode_a_plain_open_gives(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text(tmp_path / "written.txt", "x")
    assert written == tmp_path / "written.txt"
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_text_and_json_round_trip(tmp_path):
    obj = {"method": "mapa", "test_kl": 0.0163, "passes": [103, 308000], "nested": {"σ": 0.1},
           "none": None, "flag": True}
    path = write_json(tmp_path / "a" / "b" / "metrics.json", obj)
    text = path.read_text()
    assert json.loads(text) == obj
    assert text.endswith("}\n") and "\n  \"method\": \"mapa\"," in text  # indented, one key a line
    assert list(json.loads(text)) == list(obj)  # keys keep their order
    assert write_text(tmp_path / "t.md", "| a |\n").read_text() == "| a |\n"


def test_json_refuses_what_it_cannot_write_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_csv_round_trip_with_the_union_of_keys_in_first_seen_order(tmp_path):
    rows = [{"step": 100, "objective": -1.5},
            {"step": 200, "objective": -1.25, "test_kl": 0.02},
            {"gap": 0.5, "step": 300}]
    path = write_csv(tmp_path / "history.csv", rows)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["step", "objective", "test_kl", "gap"]
        back = list(reader)
    assert back == [{"step": "100", "objective": "-1.5", "test_kl": "", "gap": ""},
                    {"step": "200", "objective": "-1.25", "test_kl": "0.02", "gap": ""},
                    {"step": "300", "objective": "", "test_kl": "", "gap": "0.5"}]
    assert path.read_text().splitlines()[0] == "step,objective,test_kl,gap"


def test_a_figure_is_saved_in_the_format_of_its_suffix(tmp_path):
    from mapa_vae.run_figures import plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert save_figure(fig, tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_figure(fig, tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


def test_an_output_folder_that_can_be_made_is_accepted_and_not_made(tmp_path):
    for path in (tmp_path, tmp_path / "new", tmp_path / "new" / "deeper"):
        assert check_output_folder(path) == path
    assert check_output_folder(str(tmp_path / "new")) == tmp_path / "new"
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_path_is_refused_naming_the_option_and_the_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for path in (afile, afile / "sub", afile / "sub" / "deeper"):
        with pytest.raises(ValueError) as error:
            check_output_folder(path, option="--results")
        assert str(error.value) == (f"cannot write --results {str(path)!r}: "
                                    f"{str(afile)!r} is a file, not a folder")


def test_a_broken_link_in_the_path_is_refused(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError) as error:
        check_output_folder(link / "out")
    assert str(error.value) == (f"cannot write --out {str(link / 'out')!r}: "
                                f"{str(link)!r} is a broken link")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        for path in (locked, locked / "out", locked / "out" / "deeper"):
            with pytest.raises(ValueError) as error:
                check_output_folder(path)
            assert str(error.value) == (f"cannot write --out {str(path)!r}: "
                                        f"the folder {str(locked)!r} is not writable")
    finally:
        locked.chmod(0o700)


def test_a_folder_the_process_may_not_write_is_refused_even_as_root(tmp_path, monkeypatch):
    """The same check where permission bits do not bind (root): what ``os.access`` answers."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (False if str(path) == str(locked)
                                                          else real_access(path, mode)))
    with pytest.raises(ValueError) as error:
        check_output_folder(locked / "out")
    assert str(error.value) == (f"cannot write --out {str(locked / 'out')!r}: "
                                f"the folder {str(locked)!r} is not writable")
    assert check_output_folder(tmp_path / "elsewhere") == tmp_path / "elsewhere"
