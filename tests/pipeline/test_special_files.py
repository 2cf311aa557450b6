"""Walking and reading never open what is not a regular file: real FIFOs, sockets, devices, dangling symlinks,
files removed mid-walk, and a file swapped for a FIFO between the walk and the read."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.errors import DecodeError
from services.imaging import read_regular_file
from services.pipeline.sources import Unfound, build_items, walk_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def odd_folder(tmp_path: Path, cxr_public: Path):
    """A folder with one real X-ray beside a FIFO, a live unix socket, a symlink to /dev/null and a dangling
    symlink."""
    folder = tmp_path / "export"
    folder.mkdir()
    good = next((cxr_public / "images").rglob("*.jpg"))
    shutil.copy(good, folder / "a_good.jpg")
    os.mkfifo(folder / "b_pipe.dcm")
    # AF_UNIX paths are limited to ~108 bytes: bind from inside the folder with a short relative name.
    cwd = os.getcwd()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(folder)
        sock.bind("c_sock.dcm")
    finally:
        os.chdir(cwd)
    sock.listen(1)
    (folder / "d_null.dcm").symlink_to("/dev/null")
    (folder / "e_dangling.dcm").symlink_to(folder / "nowhere.dcm")
    yield folder
    sock.close()


def test_walk_reports_each_special_file_with_its_reason(odd_folder: Path) -> None:
    entries = list(walk_files([odd_folder]))
    files = [e for e in entries if isinstance(e, Path)]
    reasons = {Path(e.path).name: e.reason for e in entries if isinstance(e, Unfound)}
    assert [f.name for f in files] == ["a_good.jpg"]
    assert reasons == {
        "b_pipe.dcm": "named pipe (FIFO)",
        "c_sock.dcm": "socket",
        "d_null.dcm": "device",
        "e_dangling.dcm": "broken symlink",
    }


def test_special_paths_given_directly(odd_folder: Path) -> None:
    given = [odd_folder / "b_pipe.dcm", odd_folder / "c_sock.dcm", Path("/dev/null"), odd_folder / "e_dangling.dcm"]
    got = [(e.path, e.reason) for e in walk_files(given) if isinstance(e, Unfound)]
    assert got == [
        (str(given[0]), "named pipe (FIFO)"),
        (str(given[1]), "socket"),
        ("/dev/null", "device"),
        (str(given[3]), "broken symlink"),
    ]


def test_file_removed_mid_walk(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    walk = walk_files([tmp_path])
    assert next(walk) == tmp_path / "a.png"
    (tmp_path / "b.png").unlink()  # the folder was listed; b goes before the walker reaches it
    rest = list(walk)
    assert rest == [Unfound(str(tmp_path / "b.png"), "vanished while walking"), tmp_path / "c.png"]


def test_build_items_turns_special_files_into_find_records(odd_folder: Path) -> None:
    items, unfound = build_items([odd_folder], label_from="folder")
    assert [i.path.name for i in items] == ["a_good.jpg"]
    assert len(unfound) == 4


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_read_regular_file_refuses_without_blocking(odd_folder: Path, kind: str) -> None:
    path = {"fifo": odd_folder / "b_pipe.dcm", "socket": odd_folder / "c_sock.dcm", "device": Path("/dev/null")}[kind]
    reason = {"fifo": "named pipe (FIFO)", "socket": "socket", "device": "device"}[kind]
    with pytest.raises(DecodeError, match=reason.replace("(", r"\(").replace(")", r"\)")) as info:
        read_regular_file(path)
    assert info.value.path == str(path)


def test_read_regular_file_limits(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 5000)
    assert read_regular_file(path) == path.read_bytes()
    assert read_regular_file(path, max_bytes=len(path.read_bytes())) == path.read_bytes()
    with pytest.raises(DecodeError, match="file too large"):
        read_regular_file(path, max_bytes=1000)
    with pytest.raises(DecodeError, match="broken symlink"):
        (tmp_path / "gone").symlink_to(tmp_path / "nothing")
        read_regular_file(tmp_path / "gone")


def test_file_swapped_for_a_fifo_after_the_walk_fails_only_that_file(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, data_dir: Path
) -> None:
    """The walk saw a regular file; by the time the decoder reads it, it is a FIFO. The read must not block."""
    from services.config import Settings
    from services.pipeline import IngestOptions, Ingestor, Runtime

    folder = tmp_path / "studies"
    folder.mkdir()
    for i, src in enumerate(sorted((cxr_public / "images").rglob("*.jpg"))[:3]):
        shutil.copy(src, folder / f"{i}.png")
    items, unfound = build_items([folder])
    assert len(items) == 3 and not unfound
    (folder / "1.png").unlink()
    os.mkfifo(folder / "1.png")
    with Runtime(Settings(), model_path=tiny_checkpoint) as rt:
        opts = IngestOptions(collection="swap", batch_size=4, decode_workers=1)
        report = Ingestor(rt.encoder, rt.store, opts, salt=rt.settings.salt).run(items)
    assert report.indexed == 2
    assert [(Path(f.path).name, f.stage, f.reason) for f in report.failed] == [("1.png", "decode", "named pipe (FIFO)")]


def test_cxr_index_on_a_folder_with_a_fifo_finishes(odd_folder: Path, tiny_checkpoint: Path, data_dir: Path) -> None:
    """The new user's report: `cxr index` on a folder holding a named pipe used to hang forever."""
    env = {**os.environ, "CXR_DATA_DIR": str(data_dir), "CXR_MODEL": str(tiny_checkpoint), "CXR_TORCH_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "index", str(odd_folder), "--collection", "odd", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a hang is the bug; the run itself takes seconds
    )
    assert proc.returncode == 3, proc.stderr  # some failed while the rest landed
    import json

    report = json.loads(proc.stdout)
    assert report["indexed"] == 1
    got = sorted((Path(f["path"]).name, f["stage"], f["reason"]) for f in report["failed"])
    assert got == [
        ("b_pipe.dcm", "find", "named pipe (FIFO)"),
        ("c_sock.dcm", "find", "socket"),
        ("d_null.dcm", "find", "device"),
        ("e_dangling.dcm", "find", "broken symlink"),
    ]
