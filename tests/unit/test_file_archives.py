"""Uploaded archives: each unsafe one is refused with a one-line message naming the archive, the member and the
setting, and nothing of it is left on disk; a safe one extracts byte for byte and its dataset is found."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from trainer_service.errors import InvalidArgumentError
from trainer_service.files.archive import ArchiveLimits, extract_archive
from trainer_service.files.datasets import locate_dataset

LIMITS = ArchiveLimits(max_extracted_bytes=64 * 1024 * 1024, max_members=50, max_compression_ratio=100.0,
                       ratio_floor_bytes=1024 * 1024)


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _refused(archive: Path, tmp_path: Path, limits: ArchiveLimits = LIMITS) -> str:
    destination = tmp_path / "out"
    with pytest.raises(InvalidArgumentError) as caught:
        extract_archive(archive, destination, limits, name=archive.name)
    assert not destination.exists(), "a refused archive leaves nothing behind"
    message = str(caught.value)
    assert message.startswith(archive.name + ": ") and "\n" not in message
    return message


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "C:/Windows/evil.jsonl", "\\\\server\\share\\x"])
def test_an_absolute_member_path_is_refused(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "abs.tar", [(_info("train.jsonl"), b"{}\n"), (_info(name), b"x")])
    assert "absolute path" in _refused(archive, tmp_path)


@pytest.mark.parametrize("name", ["../evil.jsonl", "images/../../evil", "a\\..\\..\\evil"])
def test_a_member_that_climbs_out_is_refused(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "dotdot.tar.gz", [(_info(name), b"x")], mode="w:gz")
    assert "(..)" in _refused(archive, tmp_path)


def test_symlinks_and_hardlinks_are_refused(tmp_path: Path) -> None:
    symlink = _tar(tmp_path / "sym.tar", [(_info("images", tarfile.SYMTYPE, "/etc"), b""),
                                          (_info("images/passwd"), b"x")])
    assert "member 'images' is a symbolic link" in _refused(symlink, tmp_path)
    hardlink = _tar(tmp_path / "hard.tar", [(_info("train.jsonl"), b"{}\n"),
                                            (_info("shadow", tarfile.LNKTYPE, "/etc/shadow"), b"")])
    assert "member 'shadow' is a hard link" in _refused(hardlink, tmp_path)


def test_a_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "sym.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("images")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc")
    assert "symbolic link" in _refused(archive, tmp_path)


def test_device_files_and_fifos_are_refused(tmp_path: Path) -> None:
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        archive = _tar(tmp_path / f"dev{kind.decode()}.tar", [(_info("null", kind), b"")])
        assert "device file or FIFO" in _refused(archive, tmp_path)


def test_a_zip_bomb_is_refused_by_its_ratio_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train.jsonl", b"{}\n")
        zf.writestr("images/zeros.bin", bytes(32 * 1024 * 1024))  # ~32 KiB compressed: 1000x
    message = _refused(archive, tmp_path)
    assert "--max-compression-ratio" in message and "zip bomb" in message


def test_a_gzip_bomb_in_a_tar_is_refused_by_its_ratio(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "bomb.tar.gz", [(_info("zeros.bin"), bytes(32 * 1024 * 1024))], mode="w:gz")
    assert "--max-compression-ratio" in _refused(archive, tmp_path)


def test_a_zip_member_that_inflates_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    """The central directory says 1 KiB; the data inflates to 2 MiB (a lying header, as in crafted bombs)."""
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(2 * 1024 * 1024))
    raw = bytearray(archive.read_bytes())
    for signature, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = raw.index(signature)
        raw[at + size_offset:at + size_offset + 4] = (1024).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    message = _refused(archive, tmp_path)
    assert "zeros.bin" in message


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for index in range(LIMITS.max_members + 1):
            zf.writestr(f"images/{index}.jpg", b"x")
    assert f"more than {LIMITS.max_members} members (--max-archive-members)" in _refused(archive, tmp_path)


def test_an_archive_that_extracts_past_the_size_cap_is_refused(tmp_path: Path) -> None:
    limits = ArchiveLimits(max_extracted_bytes=1024 * 1024, max_members=50, max_compression_ratio=100.0)
    archive = _tar(tmp_path / "big.tar", [(_info("a.bin"), bytes(600 * 1024)), (_info("b.bin"), bytes(600 * 1024))])
    assert "more than 1048576 bytes (--max-archive-extracted-bytes)" in _refused(archive, tmp_path, limits)


def test_a_corrupt_archive_is_refused_in_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    assert "not a readable tar.gz archive" in _refused(archive, tmp_path)


def test_a_safe_archive_extracts_and_its_llava_dataset_is_found(tmp_path: Path) -> None:
    """A LLaVA-Instruct layout under one top directory, as `tar czf llava.tgz llava/` makes it."""
    record = {"id": "1", "image": "coco/000000033471.jpg",
              "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A bus"}]}
    image = bytes(range(256)) * 40
    archive = _tar(tmp_path / "llava.tgz", [(_info("./", tarfile.DIRTYPE), b""), (_info("llava", tarfile.DIRTYPE), b""),
                                            (_info("llava/llava_mix.json"), json.dumps([record]).encode()),
                                            (_info("llava/coco/000000033471.jpg"), image)], mode="w:gz")
    extract_archive(archive, tmp_path / "out", LIMITS, name=archive.name)
    assert (tmp_path / "out/llava/coco/000000033471.jpg").read_bytes() == image
    assert locate_dataset(tmp_path / "out", name=archive.name).path == tmp_path / "out/llava/llava_mix.json"


def test_a_llamafactory_dataset_info_names_the_dataset(tmp_path: Path) -> None:
    info = {"mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                          "columns": {"messages": "messages", "images": "images"}},
            "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}  # listed, but its file is not in the archive
    archive = tmp_path / "lf.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("dataset_info.json", json.dumps(info))
        zf.writestr("mllm_demo.json", "[]")
        zf.writestr("mllm_demo_data/1.jpg", b"jpeg")
    extract_archive(archive, tmp_path / "out", LIMITS, name=archive.name)
    location = locate_dataset(tmp_path / "out", name=archive.name)
    assert (location.path.name, location.dataset_name) == ("dataset_info.json", "mllm_demo")


def test_two_dataset_files_are_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/train.jsonl").write_text("{}\n")
    (tmp_path / "out/extra.parquet").write_bytes(b"PAR1")
    with pytest.raises(InvalidArgumentError, match=r"several dataset files at its top level \(extra.parquet, "
                                                    r"train.jsonl\)"):
        locate_dataset(tmp_path / "out", name="two.zip")
