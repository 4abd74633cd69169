"""tests/python/test_repo_paths.py: nothing in the build, tests or scripts reads outside the repository.

Users clone the repository alone, so a path that climbs above the repo root (the old
`../shared/assets`) makes the suite fail on their machine. This scans every tracked build, test and
script file for path expressions that leave the root, and checks the scanner on known bad lines so
that it can fail. Paths that *test* our rejection of escaping paths (e.g. a weight_map entry
"../outside.safetensors" inside a temp dir) are string literals, not paths we open, and are allowed
by name below."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# File kinds whose contents build, test or run the project.
SCANNED = re.compile(r"(\.(cpp|h|cu|cuh|py|sh|cmake|txt|yaml)|CMakeLists\.txt|/run)$")

# Path expressions that leave the repository root.
ESCAPES = [
    (re.compile(r"\bROOT\s*\.\s*parent\b"), "ROOT.parent (Python: above the repo root)"),
    (re.compile(r"parents\[\s*([3-9]|\d\d+)\s*\]"), "Path.parents[n] deep enough to leave the repo"),
    (re.compile(r"source_dir\(\)\s*/\s*\"\.\.\""), "source_dir() / \"..\" (C++: above the source dir)"),
    (re.compile(r"(CMAKE_SOURCE_DIR|ROOT|PROJECT_SOURCE_DIR)\}?\"?/\.\."), "$ROOT/.. (shell/CMake)"),
    (re.compile(r"(?<![\w.])\.\./shared\b|[\"'/]shared/assets\b"), "../shared or shared/assets"),
    (re.compile(r"[\"'](/work|/home|/root)/"), "an absolute path of one machine"),
]

# Test inputs that exercise our own rejection of escaping paths; they never open outside the repo.
ALLOWED = {
    ("tests/test_safetensors_bad_input.cpp", '"../" + d.dir().filename().string()'),
    ("tests/test_cli.cpp", '"../outside.safetensors"'),
    ("tests/python/test_repo_paths.py", None),  # this file lists the patterns themselves
}


def escapes_in(text):
    """Yields (line number, line, reason) for each path expression in text that leaves the root."""
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, reason in ESCAPES:
            if pattern.search(line):
                yield number, line.strip(), reason


def tracked_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if SCANNED.search(p) and not p.startswith("tests/assets/")]


def test_scanner_catches_known_escapes():
    bad = [
        'ASSETS = ROOT.parent / "shared" / "assets" / "tokenizers"',
        'fs::path assets_dir() { return source_dir() / ".." / "shared" / "assets"; }',
        'cp "$ROOT/../shared/assets/x" .',
        'path = ROOT.parents[3] / "x"',
        'open("/work/shared/assets/tokenizers/x.json")',
        'set(X ${CMAKE_SOURCE_DIR}/../deps)',
    ]
    for line in bad:
        assert list(escapes_in(line)), f"scanner misses: {line}"
    good = ['ASSETS = ROOT / "tests" / "assets" / "tokenizers"', 'return source_dir() / "tests" / "assets";',
            'ROOT = Path(__file__).resolve().parents[2]', 'cd "$ROOT"']
    for line in good:
        assert not list(escapes_in(line)), f"scanner flags a good line: {line}"


def test_no_build_test_or_script_path_leaves_the_repo():
    files = tracked_files()
    assert len(files) > 50, f"expected the project's sources, found {len(files)} files"
    problems = []
    for rel in files:
        allowed = {snippet for (path, snippet) in ALLOWED if path == rel}
        if None in allowed:
            continue
        text = (ROOT / rel).read_text(encoding="utf-8", errors="replace")
        for number, line, reason in escapes_in(text):
            if any(snippet in line for snippet in allowed):
                continue
            problems.append(f"{rel}:{number}: {reason}: {line}")
    assert not problems, "paths that leave the repository:\n" + "\n".join(problems)


def test_test_assets_match_their_checksums():
    import hashlib
    base = ROOT / "tests" / "assets" / "tokenizers"
    lines = (base / "SHA256SUMS").read_text().split("\n")
    entries = [l.split() for l in lines if l.strip()]
    assert len(entries) == 7
    for digest, name in entries:
        assert hashlib.sha256((base / name).read_bytes()).hexdigest() == digest, name
