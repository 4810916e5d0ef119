"""The test data are copies of public files: each is listed in tests/data/SOURCES.md with its hash."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SECTION = re.compile(r"^## (?P<folder>\S+)/ \(")
HASH = re.compile(r"^[0-9a-f]{16}$")


def listed_hashes() -> dict[str, str]:
    """``folder/file`` → the sha256/16 written in its row of SOURCES.md."""
    listed: dict[str, str] = {}
    folder = None
    for line in (DATA / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        if match := SECTION.match(line):
            folder = match["folder"]
        elif folder and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            (digest,) = [cell for cell in cells if HASH.match(cell)]
            listed[f"{folder}/{cells[0].strip('`')}"] = digest
    return listed


def test_every_test_data_file_is_listed_with_its_hash():
    listed = listed_hashes()
    on_disk = {
        path.relative_to(DATA).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for path in DATA.rglob("*")
        if path.is_file() and path.name != "SOURCES.md"
    }
    assert sorted(set(on_disk) - set(listed)) == [], "files without a SOURCES.md row"
    assert sorted(set(listed) - set(on_disk)) == [], "SOURCES.md rows without a file"
    changed = sorted(name for name, digest in on_disk.items() if listed[name] != digest)
    assert changed == [], "edited since copied"


def test_no_test_or_module_names_a_folder_outside_the_repository():
    # an absolute /work path, a sibling shared folder (character classes keep this file itself clean)
    outside = re.compile(r'/wor[k]/|\.\./share[d]\b|/ *"share[d]"')
    for path in [*(ROOT / "tests").glob("*.py"), *(ROOT / "cds_service").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        assert not outside.search(text), path.relative_to(ROOT).as_posix()
