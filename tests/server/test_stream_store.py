"""The snapshot store: ids that cannot escape or collide, atomic files, verification and quarantine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters import SourceModel, create_adapter, get_frozen_forward
from adapters.online import OnlineStream
from tests.conftest import image_batch
from tests.helpers import damage_inside
from tta_server.streams import DamagedSnapshotError, InvalidStreamIdError, MissingSnapshotError, SnapshotStore
from tta_server.streams.ids import stream_id_for_sequence, validate_stream_id
from tta_server.streams.snapshot_file import file_name

HOSTILE_IDS = [
    "../escape",
    "..",
    ".hidden",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "nul\x00byte",
    "x" * 129,
    "",
    "space here",
    "ünïcode",
    "-leading-dash",
]


def state(source: SourceModel, seed: int = 0) -> dict[str, Any]:
    stream = OnlineStream(create_adapter("tent", source), 4, get_frozen_forward(source, "torch"))
    stream.step(image_batch(6, seed))
    stream.step(image_batch(2, seed + 1))  # something buffered
    return stream.state_dict()


@pytest.mark.parametrize("stream_id", HOSTILE_IDS)
def test_hostile_ids_are_refused_everywhere(tmp_path: Path, stream_id: str) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(InvalidStreamIdError, match="invalid stream id"):
        validate_stream_id(stream_id)
    with pytest.raises(InvalidStreamIdError):
        store.path(stream_id)
    assert list(tmp_path.iterdir()) == []


def test_file_names_stay_inside_and_never_coincide(tmp_path: Path, tiny_source: SourceModel) -> None:
    store = SnapshotStore(tmp_path)
    ids = ["cam", "Cam", "CAM", "cam.", "cam-1", "cam_1", "cam:1", "a" * 128, "seq-18446744073709551615"]
    paths = [store.path(i) for i in ids]
    assert len({p.name.lower() for p in paths}) == len(ids)  # distinct even on case-insensitive disks
    assert all(p.parent == tmp_path for p in paths)
    store.write("cam", state(tiny_source, 0))
    store.write("Cam", state(tiny_source, 5))
    # each file records its own id, and read() checks it
    assert not torch.equal(
        store.read("cam")["tensors"]["buffer.pending"], store.read("Cam")["tensors"]["buffer.pending"]
    )
    assert sorted(store.scan()) == ["Cam", "cam"]


def test_a_round_trip_is_exact_and_leaves_no_temporary_files(tmp_path: Path, tiny_source: SourceModel) -> None:
    store = SnapshotStore(tmp_path)
    saved = state(tiny_source)
    store.write("site-a", saved)
    loaded = store.read("site-a")
    assert loaded["steps"] == saved["steps"] and loaded["config"] == saved["config"]
    assert loaded["tensors"].keys() == saved["tensors"].keys()
    assert all(torch.equal(loaded["tensors"][k], v) for k, v in saved["tensors"].items())
    assert torch.equal(loaded["generator"], saved["generator"])
    assert [p.name for p in tmp_path.iterdir()] == [file_name("site-a")]
    with pytest.raises(MissingSnapshotError):
        store.read("other")


def _rewrite(path: Path, tensors: dict[str, torch.Tensor] | None = None, **metadata: str) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    meta.update(metadata)
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata=meta)


def _nan_with_a_valid_checksum(path: Path) -> None:
    from tta_server.streams.snapshot_file import checksum as _checksum

    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("affine"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    meta["checksum"] = _checksum(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "unreadable"),
    "not safetensors": (lambda p: p.write_bytes(b"\x00" * 64), "unreadable"),
    "flipped byte": (damage_inside, "checksum"),
    "edited metadata": (lambda p: _rewrite(p, steps="999"), "checksum"),
    "malformed metadata": (lambda p: _rewrite(p, config="{not json"), "checksum"),
    "other format": (lambda p: _rewrite(p, file_format="something else"), "format"),
    "non-finite tensors": (_nan_with_a_valid_checksum, "non-finite"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_files_are_quarantined_with_their_reason(tmp_path: Path, tiny_source: SourceModel, kind: str) -> None:
    damage, reason = DAMAGE[kind]
    store = SnapshotStore(tmp_path)
    store.write("good", state(tiny_source))
    damage(store.write("bad", state(tiny_source, 3)))
    assert store.scan() == ["good"]  # the good one is kept, start-up goes on
    assert store.report()["quarantined"] == 1 and reason in store.report()["quarantined_files"][0]["reason"]
    moved = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert len(moved) == 2 and moved[1].endswith(".reason.txt") and not store.exists("bad")
    assert reason in (tmp_path / "quarantine" / moved[1]).read_text()


SEEN_IN_THE_HEADER = {"truncated", "not safetensors", "other format", "malformed metadata"}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_header_scan_quarantines_bad_headers_now_and_damaged_contents_when_read(
    tmp_path: Path, tiny_source: SourceModel, kind: str
) -> None:
    damage, reason = DAMAGE[kind]
    store = SnapshotStore(tmp_path)
    store.write("good", state(tiny_source))
    damage(store.write("bad", state(tiny_source, 3)))
    found = store.scan(headers_only=True)  # start-up: headers only
    if kind in SEEN_IN_THE_HEADER:
        assert found == ["good"] and store.report()["quarantined"] == 1 and not store.exists("bad")
        return
    assert sorted(found) == ["bad", "good"] and store.report()["quarantined"] == 0  # the contents are read on wake
    with pytest.raises(DamagedSnapshotError, match=reason):
        store.read("bad")
    assert store.report()["quarantined"] == 1 and not store.exists("bad") and store.read("good")["steps"] == 1


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_check_finds_what_a_read_would_quarantine_and_moves_nothing(
    tmp_path: Path, tiny_source: SourceModel, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tta_server.streams.store as store_module

    damage, reason = DAMAGE[kind]
    store = SnapshotStore(tmp_path)
    store.write("good", state(tiny_source))
    damage(store.write("bad", state(tiny_source, 3)))
    with monkeypatch.context() as patched:  # tensor by tensor, never the whole file at once
        patched.setattr(store_module, "load", lambda path: pytest.fail(f"{path} read in full"))
        problem = store.check("bad")
        assert store.check("good") is None
    assert problem is not None and reason in problem
    assert store.exists("bad") and store.report()["quarantined"] == 0
    with pytest.raises(DamagedSnapshotError):
        store.read("bad")
    assert store.report()["quarantined_files"][0]["reason"] == problem  # the same verdict, in the same words
    assert store.check("bad") is None  # gone: no verdict, the read judged it


@pytest.mark.parametrize("headers_only", [True, False])
def test_a_header_nested_too_deep_is_quarantined_not_a_crash(
    tmp_path: Path, tiny_source: SourceModel, headers_only: bool
) -> None:
    store = SnapshotStore(tmp_path)
    store.write("good", state(tiny_source))
    path = store.write("deep", state(tiny_source))
    _rewrite(path, config="[" * 100_000)  # json's parser recurses; the checksum made valid again below
    from safetensors import safe_open

    from tta_server.streams.snapshot_file import checksum as _checksum

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    _rewrite(path, checksum=_checksum(load_file(str(path)), meta))
    assert store.scan(headers_only=headers_only) == ["good"]
    assert "recursion" in store.report()["quarantined_files"][0]["reason"]


def test_a_header_scan_reads_no_tensors(
    tmp_path: Path, tiny_source: SourceModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tta_server.streams.store as store_module

    store = SnapshotStore(tmp_path)
    for name in ("a", "b"):
        store.write(name, state(tiny_source))
    monkeypatch.setattr(store_module, "load", lambda path: pytest.fail(f"{path} read in full"))
    assert sorted(store.scan(headers_only=True)) == ["a", "b"]


def test_a_file_under_another_streams_name_is_refused(tmp_path: Path, tiny_source: SourceModel) -> None:
    store = SnapshotStore(tmp_path)
    store.write("alice", state(tiny_source))
    store.path("alice").replace(store.path("bob"))  # a file copied over another stream's name
    with pytest.raises(DamagedSnapshotError, match="belongs to stream 'alice'"):
        store.read("bob")
    assert store.scan() == []


def test_an_unwritable_directory_reports_and_keeps_the_file(tmp_path: Path, tiny_source: SourceModel) -> None:
    store = SnapshotStore(tmp_path)
    (tmp_path / file_name("x")).write_bytes(b"junk")
    (tmp_path / "quarantine").write_text("a file where the folder should be")  # the move fails
    assert store.scan() == [] and store.report()["quarantined"] == 1
    assert (tmp_path / file_name("x")).exists()


def test_left_overs_of_an_interrupted_write_are_removed(tmp_path: Path, tiny_source: SourceModel) -> None:
    store = SnapshotStore(tmp_path)
    store.write("a", state(tiny_source))
    (tmp_path / f".{file_name('a')}.1234abcd.partial").write_bytes(b"half")
    assert store.scan() == ["a"] and len(list(tmp_path.iterdir())) == 1


def test_sequence_ids_map_to_valid_stream_ids() -> None:
    assert stream_id_for_sequence(21) == "seq-21" and stream_id_for_sequence("cam-1") == "seq-cam-1"
    assert stream_id_for_sequence(0) is None and stream_id_for_sequence("") is None
    for bad in (-1, 2**64, True, 1.5, [1], {"a": 1}, "nul\x00", "../x", "a/b", "x" * 125):
        with pytest.raises(InvalidStreamIdError):
            stream_id_for_sequence(bad)


def test_a_file_replaced_while_it_is_read_is_read_again_not_quarantined(
    tmp_path: Path, tiny_source: SourceModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors opens a file by name for its header and again for its data: a snapshot replaced
    in between (another replica, or any reader beside the writing server) reads as a mix of two
    files. That mix failed its checksum and the good file was quarantined (seen once in about 50
    runs of the SIGKILL test, whose reader polls while the server rewrites)."""
    import tta_server.streams.store as store_module

    store = SnapshotStore(tmp_path)
    store.write("cam", state(tiny_source, 0))
    newer = state(tiny_source, 7)
    real_load = store_module.load
    calls = []

    def torn_once(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        calls.append(path)
        tensors, metadata = real_load(path)
        if len(calls) == 1:  # the header was read; now the writer renames a new file over it
            store.write("cam", newer)
            tensors = real_load(path)[0]  # and the data comes from the new file
        return tensors, metadata

    monkeypatch.setattr(store_module, "load", torn_once)
    got = store.read("cam")
    assert len(calls) == 2 and store.report()["quarantined"] == 0 and store.exists("cam")
    assert torch.equal(got["tensors"]["affine.0"], newer["tensors"]["affine.0"])  # the file as it is now
