"""External programs the corpus builder calls, and the Debian packages that provide them.

Every program runs through :func:`run`: list arguments (no shell), a timeout, a checked return code, and
a :class:`~steadyvoice.errors.DataError` that names the program and the Debian package to install.
:func:`check` finds what is missing and either installs it (``apt-get install``, as root) or raises an
error holding the exact command to run.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from steadyvoice.errors import DataError

log = logging.getLogger("steadyvoice")


@dataclass(frozen=True)
class Requirement:
    """Something the build needs: a program on PATH or a file, provided by a Debian package."""

    package: str
    program: str | None = None  # looked up on PATH
    path: str | None = None  # a file or directory that must exist (e.g. a festival voice)

    def satisfied(self) -> bool:
        program_ok = self.program is None or shutil.which(self.program) is not None
        path_ok = self.path is None or Path(self.path).exists()
        return program_ok and path_ok

    def describe(self) -> str:
        return self.program or self.path or self.package


# Tools used by every build that fetches Debian data packages (present on any Debian system).
APT_TOOLS = (
    Requirement("apt", program="apt-get"),
    Requirement("apt", program="apt-cache"),
    Requirement("dpkg", program="dpkg-deb"),
    Requirement("dpkg", program="dpkg-query"),
)


def missing(requirements: list[Requirement]) -> list[Requirement]:
    """The requirements that are not met, each once."""
    out: list[Requirement] = []
    for req in requirements:
        if not req.satisfied() and req not in out:
            out.append(req)
    return out


def install_command(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def check(requirements: list[Requirement], *, install: bool) -> None:
    """Make sure every requirement is met: install the missing packages or explain how to.

    Without ``install`` a missing requirement is a DataError whose message holds the exact
    ``apt-get install`` command. With ``install`` (root only) apt-get installs the packages.
    """
    absent = missing(requirements)
    if not absent:
        return
    packages = sorted({r.package for r in absent})
    what = ", ".join(f"{r.describe()} (Debian package {r.package})" for r in absent)
    command = " ".join(install_command(packages))
    if not install:
        raise DataError(f"missing {what}; install with: {command} (or rerun with --install as root)")
    if os.geteuid() != 0:
        raise DataError(f"missing {what}; --install needs root: run `sudo {command}` instead")
    log.info("installing %s", " ".join(packages))
    run(["apt-get", "update"], package="apt", timeout=600)
    run(install_command(packages), package="apt", timeout=1800,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    still = missing(requirements)
    if still:
        raise DataError(f"apt-get installed {' '.join(packages)} but still missing: "
                        + ", ".join(r.describe() for r in still))


def run(
    args: list[str],
    *,
    package: str,
    timeout: float = 120,
    input: bytes | None = None,
    cwd: str | Path | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``args`` and return the completed process (stdout/stderr as bytes).

    A missing program, a timeout or a non-zero exit is a DataError naming the program, its Debian
    package and the end of its error output.
    """
    program = args[0]
    try:
        proc = subprocess.run(args, input=input, capture_output=True, timeout=timeout, cwd=cwd, env=env,
                              check=False)
    except FileNotFoundError:
        raise DataError(f"{program} not found: apt-get install {package}") from None
    except PermissionError:
        raise DataError(f"{program}: permission denied (is it executable?)") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"{program} did not finish within {timeout:.0f} s: {' '.join(args[:6])} ...") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise DataError(f"{program} failed (exit {proc.returncode}) running {' '.join(args[:8])}: "
                        + (" / ".join(tail) or "no error output"))
    return proc


def package_version(package: str) -> str | None:
    """Installed version of a Debian package, or None when it is not installed."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
                              capture_output=True, timeout=30, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    status, _, version = proc.stdout.decode().partition("\t")
    return version if status.endswith(" installed") else None
