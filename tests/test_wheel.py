"""The wheel on its own: built from the source, installed into a fresh environment, run from `/`.

One module-scoped installation serves every test here. The wheel is built by pip from a copy of
the source tree (so the checkout gets no build/ or egg-info); the new environment has no pip of
its own and takes triage's dependencies from the environment running the tests through a `.pth`
line, which adds that site-packages folder to the path without running its own `.pth` files (so an
editable install of the checkout there stays invisible). Every command runs with cwd `/`, no
PYTHONPATH, no TRIAGE_* variable and a fresh HOME: nothing but the installed package is found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "config" / "demo" / "01-sales-quote.eml"
# Not needed to build the package: caches, the environment, the training corpus (3+ MB).
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "corpus"
)


@dataclass(frozen=True)
class Installed:
    """A wheel installed into a fresh environment."""

    wheel: Path
    venv: Path
    site_packages: Path
    env: Mapping[str, str]

    def triage(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the installed `triage` console script from `/`."""
        return self.run(str(self.venv / "bin" / "triage"), *args, timeout=timeout)

    def run(self, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command from `/` in the clean environment."""
        return subprocess.run(
            list(cmd),
            cwd="/",
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _checked(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Build the wheel, install it without dependencies into a new venv, link the dependencies."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    # symlinks=True keeps triage/shipped/ as the repository has it: links to classifiers/ and
    # templates/, which the build must turn into files.
    shutil.copytree(ROOT, source, symlinks=True, ignore=SKIP)
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _checked([*pip, "wheel", "--quiet", "--no-deps", "-w", str(dist), "."], cwd=source)
    [wheel] = dist.glob("triage-*.whl")
    venv = base / "venv"
    _checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    python = venv / "bin" / "python"
    _checked([*pip, "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)], base)
    site = Path(
        _checked(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], base
        ).strip()
    )
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    home = base / "home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not key.startswith("TRIAGE_")
    }
    env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home)}
    yield Installed(wheel=wheel, venv=venv, site_packages=site, env=env)


def test_the_wheel_holds_the_package_and_its_data_but_no_dev_tools(installed: Installed) -> None:
    """The wheel carries the model, its card and every template as files (not links), and no
    development code: no devtools package, no mail harness, no tests."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        infos = {info.filename: info for info in wheel.infolist()}
    assert not [n for n in names if "mailharness" in n or n.startswith(("devtools/", "tests/"))]
    assert {n.split("/")[0] for n in names} == {"triage", "triage-0.1.0.dist-info"}
    shipped = {n.removeprefix("triage/shipped/") for n in names if n.startswith("triage/shipped/")}
    templates = {
        p.relative_to(ROOT / "templates").as_posix()
        for p in (ROOT / "templates").rglob("*")
        if p.is_file()
    }
    assert shipped == {"model.skops", "model-card.json"} | {f"templates/{t}" for t in templates}
    model = infos["triage/shipped/model.skops"]
    assert model.file_size == (ROOT / "classifiers" / "model.skops").stat().st_size

    found = installed.run(
        str(installed.venv / "bin" / "python"),
        "-c",
        "import importlib.util as u, triage; print(triage.__file__); "
        "print(u.find_spec('devtools'), u.find_spec('tests'))",
    )
    assert found.returncode == 0, found.stderr
    where, specs = found.stdout.splitlines()
    assert Path(where).is_relative_to(installed.site_packages)
    assert specs == "None None"


def test_classify_from_the_root_directory_uses_the_shipped_model(
    installed: Installed, tmp_path: Path
) -> None:
    """From `/` without a config, `triage classify` loads the model installed with the wheel."""
    sample = tmp_path / SAMPLE.name
    shutil.copy(SAMPLE, sample)
    # No model anywhere else: cwd `/` has no classifiers/, and the package's parent folder
    # (where a checkout keeps classifiers/) is site-packages.
    assert not (installed.site_packages / "classifiers").exists()
    result = installed.triage("classify", "--json", str(sample))
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["label"] == "sales"
    assert verdict["error"] is None


def test_templates_check_from_the_root_directory_checks_the_shipped_templates(
    installed: Installed,
) -> None:
    """From `/` without a config (and no ./templates), the installed templates pass the check."""
    result = installed.triage("templates", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = installed.site_packages / "triage" / "shipped" / "templates"
    assert f"templates ok ({shipped})" in result.stdout
    assert "sales: default, de, fr" in result.stdout


def test_train_refuses_to_overwrite_the_installed_model(installed: Installed) -> None:
    """Training without --output would replace a file of the installation: refused, one line."""
    model = installed.site_packages / "triage" / "shipped" / "model.skops"
    before = model.read_bytes()
    result = installed.triage("train")
    assert result.returncode == 2
    assert result.stderr.startswith(f"triage: {model} is the model installed with triage")
    assert model.read_bytes() == before


def test_init_writes_a_config_that_check_config_accepts(
    installed: Installed, tmp_path: Path
) -> None:
    """`triage init DIR` writes triage.toml (0600) and templates/; once its password files hold
    passwords the config is valid, uses the copied templates and the shipped model; a second
    init refuses to overwrite."""
    target = tmp_path / "etc" / "triage"
    result = installed.triage("init", str(target))
    assert result.returncode == 0, result.stderr
    config = target / "triage.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    assert (target / "templates" / "sales.txt").is_file()
    for name in ("imap.password", "smtp.password"):
        secret = target / name
        assert secret.stat().st_mode & 0o777 == 0o600
        secret.write_text("s3cret\n")

    checked = installed.triage("--config", str(config), "check-config")
    assert checked.returncode == 0, checked.stderr
    shipped = installed.site_packages / "triage" / "shipped" / "model.skops"
    assert f"model: shipped with triage ({shipped})" in checked.stdout
    assert f"templates: {target / 'templates'} (replies.templates_dir)" in checked.stdout
    assert "s3cret" not in checked.stdout
    assert checked.stdout.rstrip().endswith("configuration ok")

    templates = installed.triage("--config", str(config), "templates", "check")
    assert templates.returncode == 0, templates.stdout + templates.stderr

    again = installed.triage("init", str(target))
    assert again.returncode == 2
    assert again.stderr == f"triage: {config} already exists; not overwriting it " + (
        "(move it away, or pick another DIR)\n"
    )
