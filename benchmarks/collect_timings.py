"""Collect real tool-call timings: SWE-style shell commands run on real source trees, timed.

`python -m benchmarks.collect_timings --out toolpredict/data/tool_timings.jsonl [--programs 64] [--seed 0]`

Source trees are sdists of small pure-Python packages that ship their tests (fetched once with
`pip download --no-deps --no-binary :all:`, or taken from `--sdist-dir`). Each tree gets a throwaway
virtual environment that sees this interpreter's packages (pytest, pip, setuptools) through a .pth
file but installs into itself, so `pip install -e .` never touches the caller's environment; the
commands' PATH holds only that venv and the system directories. Each simulated *program* is one
agent-like session on one tree: explore (ls, find, grep -rn, cat, sed -n, head, wc, git), maybe
install the package, reproduce with `python -c` or a script, iterate on tests (one test, one file,
`-k`, the whole suite, reruns), clean up. Every call is run with `bash -c` and timed wall-clock;
non-zero exits are kept (a failing command still takes real time). Output lines:
{"tool": "bash", "args": {"command": ...}, "duration_s": float, "program_id": str, "seq": int}.
Commands are a deterministic function of the seed and the trees; durations are whatever this machine
measures. New programs stop starting after `--budget-s` seconds, keeping a run under ten minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Small pure-Python libraries with permissive licenses whose sdists carry tests runnable with pytest
# alone and build with setuptools (available here without build isolation). License in the comment.
DEFAULT_PACKAGES: tuple[str, ...] = (
    "six==1.17.0",  # MIT
    "toolz==0.12.1",  # BSD-3-Clause
    "pyflakes==3.2.0",  # MIT
    "cachetools==5.5.0",  # MIT
    "pycparser==2.22",  # BSD-3-Clause
)
COMMAND_TIMEOUT_S = 180.0


@dataclass(slots=True)
class Tree:
    """One unpacked source tree and what the command generator may refer to in it."""

    name: str  # distribution name
    root: Path
    venv: Path
    module: str  # importable top-level name
    sources: list[str]  # .py files outside the tests, relative to root
    test_files: list[str]
    node_ids: dict[str, list[str]]  # test file -> its test node ids
    names: list[str]  # function/class names defined in the sources, for grep targets
    test_dir: str | None


def _run_setup(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def fetch_sdist(spec: str, sdist_dir: Path) -> Path:
    """The sdist of NAME==VERSION in sdist_dir, downloaded from PyPI with pip if it is not there yet."""
    name, version = spec.split("==")
    pattern = re.compile(rf"^{re.escape(name).replace('_', '[-_.]').replace('-', '[-_.]')}-{re.escape(version)}"
                         r"\.(tar\.gz|zip)$", re.I)
    found = [p for p in sdist_dir.glob("*") if pattern.match(p.name)]
    if not found:
        sdist_dir.mkdir(parents=True, exist_ok=True)
        proc = _run_setup([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           "-d", str(sdist_dir), spec], sdist_dir)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {spec} failed:\n{proc.stderr[-2000:]}")
        found = [p for p in sdist_dir.glob("*") if pattern.match(p.name)]
    if not found:
        raise RuntimeError(f"no sdist for {spec} in {sdist_dir}")
    return found[0]


def _unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    (root,) = [p for p in dest.iterdir() if p.is_dir()]
    return root


def _make_venv(venv: Path) -> None:
    """A venv that installs into itself but imports this interpreter's packages (pip, pytest, setuptools)."""
    _run_setup([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent).check_returncode()
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run_setup([str(venv / "bin" / "python"), "-c", query], venv).stdout.strip())
    parent = sysconfig.get_paths()["purelib"]
    # addsitedir (not a bare path line) so the parent's own .pth files, e.g. setuptools', apply too.
    (purelib / "zz_parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    for tool in ("pip", "pytest"):
        shim = venv / "bin" / tool
        shim.write_text(f'#!/bin/sh\nexec "{venv}/bin/python" -m {tool} "$@"\n')
        shim.chmod(0o755)


def _command_env(tree: Tree, home: Path) -> dict[str, str]:
    return {"PATH": f"{tree.venv}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "PAGER": "cat", "GIT_PAGER": "cat", "TERM": "dumb", "VIRTUAL_ENV": str(tree.venv),
            # Local builds only: the collection must never reach an index after the sdists are fetched.
            "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def prepare_tree(archive: Path, workdir: Path) -> Tree:
    """Unpack, make its venv, a git repository and the lists the command generator draws from."""
    root = _unpack(archive, workdir / "trees" / archive.name.split(".tar")[0].removesuffix(".zip"))
    name = root.name.rsplit("-", 1)[0]
    venv = workdir / "venvs" / name
    venv.parent.mkdir(parents=True, exist_ok=True)
    _make_venv(venv)
    git = ["git", "-c", "user.email=collect@example.invalid", "-c", "user.name=collect"]
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-q", "-m", "sdist"]):
        _run_setup(argv, root).check_returncode()
    py_files = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if ".git" not in p.parts)
    test_files = [f for f in py_files if re.search(r"(^|/)(test_[^/]*|[^/]*_test)\.py$", f)]
    sources = [f for f in py_files if f not in test_files and "test" not in f.split("/")[0] and
               Path(f).name not in ("setup.py", "conftest.py") and not f.startswith(("doc", "bench", "example"))]
    module = _module_name(root, name)
    tree = Tree(name, root, venv, module, sources, test_files, {}, [], None)
    # Installed from the start, as in an agent's prepared task environment (src layouts need it).
    install = _run_setup(["python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
                         root, _command_env(tree, workdir))
    if install.returncode != 0:
        raise RuntimeError(f"{name}: pip install -e . failed:\n{install.stderr[-2000:]}")
    proc = _run_setup(["python", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], root,
                      _command_env(tree, workdir))
    for line in proc.stdout.splitlines():
        if "::" in line and not line.startswith(" "):
            file = line.split("::", 1)[0]
            if file in test_files:
                tree.node_ids.setdefault(file, []).append(line.strip())
    tree.test_files = [f for f in test_files if f in tree.node_ids]
    if not tree.test_files:
        raise RuntimeError(f"{name}: pytest collected no tests:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    dirs = {str(Path(f).parent) for f in tree.test_files}
    tree.test_dir = sorted(dirs, key=len)[0] if dirs != {"."} else None
    names = set()
    for f in sources[:60]:
        names.update(re.findall(r"^(?:def|class) ([A-Za-z_]\w{3,})", (root / f).read_text(errors="replace"), re.M))
    tree.names = sorted(names)
    return tree


def _module_name(root: Path, dist: str) -> str:
    """The tree's importable top-level name: the one named after the distribution when there is one."""
    wanted = dist.lower().replace("-", "_")
    candidates = []
    for base in (root, root / "src", root / "lib"):
        candidates += [p.parent.name for p in sorted(base.glob("*/__init__.py"))]
        candidates += [p.stem for p in sorted(base.glob("*.py"))]
    if wanted in candidates:
        return wanted
    return next((c for c in candidates if not c.startswith(("test", "doc", "setup", "conftest"))), wanted)


class ProgramGenerator:
    """The commands of one simulated agent session on a tree (a deterministic function of the rng)."""

    def __init__(self, tree: Tree, rng: random.Random, program_index: int):
        self.tree = tree
        self.rng = rng
        self.script = f"reproduce_{program_index}.py"

    def _src(self) -> str:
        return shlex.quote(self.rng.choice(self.tree.sources or self.tree.test_files))

    def _name(self) -> str:
        return self.rng.choice(self.tree.names) if self.tree.names else self.tree.module

    def explore(self) -> str:
        r, t = self.rng, self.tree
        n = r.randint(20, 400)
        a = r.randint(1, 300)
        options = [
            "ls", "ls -la", f"ls -la {shlex.quote(t.test_dir or '.')}", "find . -name '*.py' | head -30",
            "find . -type d -name 'test*'", "find . -name '*.py' -path '*test*' | wc -l",
            f"cat {self._src()}", f"head -n {n} {self._src()}", f"sed -n '{a},{a + n}p' {self._src()}",
            f"grep -rn '{self._name()}' .", f"grep -rn 'def {self._name()}' --include='*.py' .",
            f"grep -n '{self._name()}' {self._src()}", f"wc -l {self._src()} {self._src()}",
            f"tail -n 30 {self._src()}", f"find . -name '*.py' -exec grep -l '{self._name()}' {{}} \\;",
            f"cat {self._src()} | head -n {n}", "git status", "git log --oneline -5", "git diff",
            f"grep -rn 'import' {self._src()} | head -20", f"cd {shlex.quote(str(t.root))} && ls",
            "cat setup.py 2>/dev/null || cat pyproject.toml",
        ]
        return r.choice(options)

    def install(self) -> str:
        return self.rng.choice([
            "pip install --no-deps --no-build-isolation -e .",
            "pip install --no-deps --no-build-isolation .",
            "python -m pip install --no-build-isolation --no-deps -e . -q",
            "pip install -q --no-deps --no-build-isolation -e .",
        ])

    def reproduce(self) -> list[str]:
        m, name = self.tree.module, self._name()
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:
            return [f"python -c 'import {m}; print({m}.__file__)'"]
        if choice == 1:
            return [f"python -c \"import {m}, inspect; print([n for n in dir({m}) if not n.startswith('_')][:20])\""]
        if choice == 2:
            code = (f"import time, {m}\nstart = time.perf_counter()\nfor _ in range({r.choice([1, 100, 10000])}):\n"
                    f"    dir({m})\nprint('{name}', time.perf_counter() - start)\n")
            return [f"cat > {self.script} << 'EOF'\n{code}EOF", f"python {self.script}"]
        return [f"python - << 'EOF'\nimport {m}\nprint(getattr({m}, '__version__', None))\nEOF"]

    def test(self) -> str:
        r, t = self.rng, self.tree
        file = r.choice(t.test_files)
        node = r.choice(t.node_ids[file])
        q = shlex.quote
        keyword = node.split("::")[-1].split("[")[0]
        whole = q(t.test_dir) if t.test_dir else ""
        options = [
            f"pytest {q(node)} -q", f"python -m pytest {q(node)} -x -q", f"python -m pytest {q(node)}",
            f"pytest {q(file)} -q", f"python -m pytest {q(file)} -x", f"python -m pytest {q(file)} -q 2>&1 | tail -20",
            f"pytest -k {q(keyword)} {q(file)} -q", f"python -m pytest -q -x {whole}".rstrip(),
            "pytest -q", f"python -m pytest {whole} -q 2>&1 | tail -5".replace("  ", " "),
        ]
        weights = [3, 3, 2, 3, 2, 2, 2, 1, 1, 1]
        return r.choices(options, weights)[0]

    def commands(self) -> list[str]:
        r = self.rng
        out = [self.explore() for _ in range(r.randint(3, 9))]
        if r.random() < 0.5:
            out.append(self.install())
        out += self.reproduce()
        for _ in range(r.randint(1, 4)):
            cmd = self.test()
            out.append(cmd)
            for _ in range(r.randint(0, 2)):  # read code, then rerun: an agent iterating on a failure
                out += [self.explore() for _ in range(r.randint(1, 3))]
                out.append(cmd if r.random() < 0.7 else self.test())
        if r.random() < 0.5:
            out.append(r.choice(["pytest -q", "python -m pytest -q -x", "pytest -q 2>&1 | tail -3"]))
        if r.random() < 0.3:  # reinstall after uninstalling: later programs expect the package installed
            out += [f"pip uninstall -y {self.tree.name}", "pip install --no-deps --no-build-isolation -e ."]
        out.append(f"rm -f {self.script}")
        return out


def run_command(command: str, tree: Tree, home: Path) -> float:
    """Wall-clock seconds of `bash -c command` in the tree (exit status ignored; a timeout counts in full)."""
    started = time.perf_counter()
    try:
        subprocess.run(["bash", "-c", command], cwd=tree.root, env=_command_env(tree, home),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - started


def collect(out: Path, packages: list[str], programs: int, seed: int, workdir: Path, sdist_dir: Path,
            budget_s: float) -> int:
    """Write the timings of up to `programs` programs to `out`; returns the number of records."""
    trees = [prepare_tree(fetch_sdist(spec, sdist_dir), workdir) for spec in packages]
    rng = random.Random(seed)
    started = time.monotonic()
    count = 0
    with open(out, "w", encoding="utf-8") as f:
        for p in range(programs):
            if time.monotonic() - started > budget_s:
                print(f"budget of {budget_s:.0f} s spent after {p} programs", file=sys.stderr)
                break
            tree = trees[p % len(trees)]
            gen = ProgramGenerator(tree, random.Random(rng.getrandbits(64)), p)
            program_id = f"{tree.name}-{p:03d}"
            for seq, command in enumerate(gen.commands()):
                duration = run_command(command, tree, workdir)
                f.write(json.dumps({"tool": "bash", "args": {"command": command}, "duration_s": round(duration, 6),
                                    "program_id": program_id, "seq": seq}) + "\n")
                count += 1
            f.flush()
            print(f"program {p + 1}/{programs} ({program_id}): {count} records, "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.collect_timings", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="NAME==VERSION sdists")
    parser.add_argument("--workdir", type=Path, help="where trees and venvs go (default: a new temp dir)")
    parser.add_argument("--sdist-dir", type=Path, help="sdists already downloaded (default: WORKDIR/sdists)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no program after this many seconds")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toolpredict-collect-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n = collect(args.out, args.packages, args.programs, args.seed, workdir.resolve(),
                (args.sdist_dir or workdir / "sdists").resolve(), args.budget_s)
    print(f"wrote {n} records to {args.out} (trees and venvs in {workdir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
