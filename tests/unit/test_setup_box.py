"""`make setup BACKEND=ascend` never changes the box. The box here is a fake one: a venv whose
packages beyond its own come from a fake base site-packages (a .pth file; there the transformers
dist-info says 4.57.1, as in the official image), and the package index is a local directory of
tiny wheels (PIP_NO_INDEX, PIP_FIND_LINKS: no network), one of which wants a newer transformers."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import base_env, run_make

NEEDED = ("click", "requests", "PyYAML", "Jinja2", "ahocorasick_rs")


def build_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel (one empty module, METADATA, WHEEL, RECORD)."""
    module = {"PyYAML": "yaml"}.get(name, name.lower())
    dist = f"{name}-{version}"
    files = {f"{module}/__init__.py": f"__version__ = {version!r}\n",
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()}"
                     f",{len(text.encode())}\n" for path, text in files.items())
    files[f"{dist}.dist-info/RECORD"] = record + f"{dist}.dist-info/RECORD,,\n"
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name_in_zip, text in files.items():
            archive.writestr(name_in_zip, text)
    return path


def fake_box(tmp_path: Path) -> Path:
    """The box's site-packages: transformers 4.57.1 (a dist-info and its module)."""
    base = tmp_path / "box-site-packages"
    (base / "transformers").mkdir(parents=True)
    (base / "transformers" / "__init__.py").write_text("__version__ = '4.57.1'\n")
    info = base / "transformers-4.57.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.57.1\n")
    (info / "RECORD").write_text("")
    return base


def venv_over(box: Path, venv: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "the-box.pth").write_text(f"{box}\n")  # the venv sees the box's packages, like --system-site-packages
    return site


def installed(venv: Path, name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def box(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, version in (("click", "8.1.7"), ("requests", "2.32.3"), ("PyYAML", "6.0.2"),
                          ("ahocorasick_rs", "1.0.3")):
        build_wheel(wheels, name, version)
    build_wheel(wheels, "transformers", "4.58.0")  # the newer one pip would happily install
    venv = tmp_path / "venv"
    site = venv_over(fake_box(tmp_path), venv)
    env = base_env(tmp_path / "runs", VENV=str(venv), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels),
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
    return venv, site, wheels, env


def test_setup_refuses_in_one_line_instead_of_upgrading_transformers(box):
    venv, site, wheels, env = box
    build_wheel(wheels, "Jinja2", "3.1.6", requires=("transformers>=4.58",))
    # without the constraints pip would upgrade the box's transformers: the trap is real
    dry = subprocess.run([str(venv / "bin" / "pip"), "install", "--dry-run", "click", "requests", "pyyaml", "jinja2"],
                         env=env, capture_output=True, text=True)
    assert "transformers-4.58.0" in dry.stdout, dry.stdout + dry.stderr
    result = run_make("setup", env, "BACKEND=ascend")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert len(ours) == 1, result.stderr
    assert ours[0].startswith("setup: refused: jinja2 3.1.6 depends on transformers>=4.58 but transformers==4.57.1 "
                              "is installed on the box and stays")
    assert installed(venv, "transformers") == "4.57.1"
    assert not list(site.glob("transformers*")) and not (venv / ".bringup-ready").exists()
    assert "transformers==4.57.1" in (venv / "box-constraints.txt").read_text().splitlines()


def test_setup_installs_only_the_helpers_needs_and_leaves_transformers_pinned(box):
    venv, site, wheels, env = box
    build_wheel(wheels, "Jinja2", "3.1.6")
    before = {p.name for p in site.glob("*.dist-info")}
    result = run_make("setup", env, "BACKEND=ascend")
    assert result.returncode == 0, result.stderr
    assert f"setup: {venv} ready for BACKEND=ascend" in result.stdout
    added = {p.name.split("-")[0] for p in site.glob("*.dist-info")} - {n.split("-")[0] for n in before}
    assert added == set(NEEDED)
    assert installed(venv, "transformers") == "4.57.1"
    assert (venv / ".bringup-ready").is_file()


def test_charts_come_under_the_same_constraints_and_their_absence_is_one_line(box):
    """matplotlib is installed like the helpers' needs (never changing the box); where it cannot
    be, setup still succeeds and says so in one line (the charts are optional)."""
    venv, site, wheels, env = box
    build_wheel(wheels, "Jinja2", "3.1.6")
    build_wheel(wheels, "matplotlib", "3.10.0", requires=("transformers>=4.58",))
    result = run_make("setup", env, "BACKEND=ascend")
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert len(ours) == 1 and ours[0].startswith("setup: matplotlib not installed"), result.stderr
    assert installed(venv, "transformers") == "4.57.1" and not list(site.glob("matplotlib*"))
    (wheels / "matplotlib-3.10.0-py3-none-any.whl").unlink()
    build_wheel(wheels, "matplotlib", "3.9.0")
    (venv / ".bringup-ready").unlink()
    result = run_make("setup", env, "BACKEND=ascend")
    assert result.returncode == 0 and "matplotlib" not in result.stderr, result.stderr
    assert installed(venv, "matplotlib") == "3.9.0" and installed(venv, "transformers") == "4.57.1"
