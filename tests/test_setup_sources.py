"""setup.py names every C++/CUDA source: a file under csrc/ it does not list would silently not be built."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed_sources() -> dict[str, list[str]]:
    """CPU_SOURCES and CUDA_SOURCES as written in setup.py (parsed, not imported: importing runs setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("CPU_SOURCES", "CUDA_SOURCES"):
                lists[node.targets[0].id] = ast.literal_eval(node.value)
    assert set(lists) == {"CPU_SOURCES", "CUDA_SOURCES"}, "setup.py must define CPU_SOURCES and CUDA_SOURCES"
    return lists


def test_every_source_under_csrc_is_built_exactly_once():
    lists = listed_sources()
    listed = lists["CPU_SOURCES"] + lists["CUDA_SOURCES"]
    on_disk = sorted(p.relative_to(ROOT).as_posix() for ext in ("*.cpp", "*.cu") for p in (ROOT / "csrc").rglob(ext))
    assert sorted(set(listed)) == sorted(listed), "a source is listed twice in setup.py"
    assert sorted(set(on_disk) - set(listed)) == [], "sources under csrc/ missing from setup.py's lists"
    assert sorted(set(listed) - set(on_disk)) == [], "setup.py lists sources that do not exist"


def test_cpu_module_has_no_cuda_sources():
    cpu = listed_sources()["CPU_SOURCES"]
    assert [s for s in cpu if s.endswith(".cu") or "cuda" in Path(s).name] == []
