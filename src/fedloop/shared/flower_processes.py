"""Flower's Deployment Engine as fedloop runs it: SuperLink at HQ, a SuperNode per tenant, `flwr run`.

Everything here builds the command lines of Flower's own executables (from the
same environment as fedloop) and the Flower CLI configuration they read; the
transport, TLS and SuperNode authentication are Flower's. TLS is always on:
there is no insecure mode. Nothing is installed at run time
(`--disable-runtime-dependency-installation`): the Flower App bundle carries
only HQ's `src/fedloop/server/flower_app/pyproject.toml` (HQ passes its folder), whose components are fedloop's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedloop.shared.end_with_parent import launcher
from fedloop.shared.files import FilePermissionError, require_private, write_atomic

CONNECTION = "fedloop"


class DeploymentError(RuntimeError):
    """A Flower process or CLI call failed; the message says which and why."""


def flower_executable(name: str) -> str:
    """Path of a Flower executable installed beside this Python (the same environment as fedloop)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"`{name}` not found next to {sys.executable} or on PATH: install fedloop's dependencies (`make install`)"
        )
    return found


def _require_files(private: tuple[Path, ...] = (), **paths: Path) -> None:
    missing = [f"{label} {path}" for label, path in paths.items() if not path.is_file()]
    if missing:
        raise DeploymentError(f"missing {', '.join(missing)}: create them with `fedloop certs` or bring your own")
    for path in private:
        try:
            require_private(path)
        except FilePermissionError as err:
            raise DeploymentError(str(err)) from None


@dataclass(frozen=True)
class SuperLinkSpec:
    """How HQ's SuperLink listens and proves itself."""

    home: Path  # HQ's home: keys/, hq/ (registry), superlink.db, flwr/ (Flower CLI config)
    ca_certificate: Path
    certificate: Path
    private_key: Path
    host: str = "127.0.0.1"
    port: int = 9300

    @property
    def address(self) -> str:
        """host:port as SuperNodes and the Flower CLI reach it."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        """`flower-superlink` with TLS, SuperNode authentication and a persistent state database."""
        _require_files(
            (self.private_key,),
            ca_certificate=self.ca_certificate,
            certificate=self.certificate,
            private_key=self.private_key,
        )
        return [
            sys.executable,
            "-m",
            "fedloop.shared.superlink_launcher",  # flower-superlink with a longer SQLite busy timeout
            "--ssl-ca-certfile",
            str(self.ca_certificate),
            "--ssl-certfile",
            str(self.certificate),
            "--ssl-keyfile",
            str(self.private_key),
            "--enable-supernode-auth",
            "--database",
            str(self.home / "superlink.db"),
            "--disable-runtime-dependency-installation",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]


@dataclass(frozen=True)
class SuperNodeSpec:
    """One tenant's SuperNode: whom it connects to, how it authenticates, which tenant it is."""

    tenant_config: Path  # the tenant's own TOML: name, keys, store, gates, release
    settings: Path  # the federation settings HQ shared
    superlink: str
    ca_certificate: Path
    node_key: Path
    runtime_port: int = 9400

    def command(self, home: Path) -> list[str]:
        """`flower-supernode` over TLS, signing in with the tenant's node key; its node config is written to a TOML
        file under `home` (Flower reads a .toml path as the whole config)."""
        _require_files(
            (self.node_key,),
            ca_certificate=self.ca_certificate,
            node_key=self.node_key,
            settings=self.settings,
            tenant_config=self.tenant_config,
        )
        node_config = _config_file(
            flower_home(home) / "node-config.toml",
            {
                "tenant-config": str(self.tenant_config.resolve()),
                "settings": str(self.settings.resolve()),
                "workdir": str(Path.cwd()),
            },
        )
        return [
            flower_executable("flower-supernode"),
            "--superlink",
            self.superlink,
            "--root-certificates",
            str(self.ca_certificate),
            "--auth-supernode-private-key",
            str(self.node_key),
            "--node-config",
            str(node_config),
            "--port",
            str(self.runtime_port),
            "--max-retries",
            "10",
        ]


def flower_home(home: Path) -> Path:
    """Where Flower's CLI and SuperExec keep their state for this party (FLWR_HOME)."""
    return home / "flwr"


def write_cli_config(home: Path, address: str, ca_certificate: Path) -> Path:
    """Write the Flower CLI's connection `fedloop` (TLS, checked against `ca_certificate`) for this HQ home."""
    return _config_file(
        flower_home(home) / "config.toml",
        {
            "superlink": {
                "default": CONNECTION,
                CONNECTION: {"address": address, "root-certificates": str(ca_certificate.resolve())},
            }
        },
    )


def _config_file(path: Path, document: dict[str, Any]) -> Path:
    """Write `document` as TOML (any path or name quoted correctly) to `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, tomli_w.dumps(document).encode())
    return path


def flower_env(home: Path) -> dict[str, str]:
    """The environment for a Flower process of the party living in `home`.

    Flower starts its helpers (`flower-superexec`, `flwr-serverapp`, ...) by name, so
    this environment's executables come first on PATH even when it is not activated.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "FLWR_HOME": str(flower_home(home).resolve())}


def _flwr(home: Path, *args: str, timeout: float = 120.0) -> str:
    result = subprocess.run(
        [flower_executable("flwr"), *args], env=flower_env(home), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise DeploymentError(
            f"`flwr {' '.join(args[:2])}` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-600:]}"
        )
    return result.stdout


def register_node(home: Path, public_key: Path, name: str) -> str:
    """Register a tenant's SuperNode public key with the running SuperLink; returns Flower's output."""
    if not public_key.is_file():
        raise DeploymentError(f"node public key {public_key} not found: the tenant makes it with `fedloop keys node`")
    return _flwr(home, "supernode", "register", str(public_key), CONNECTION, "--name", name)


def submit_run(
    home: Path,
    app_dir: Path,
    settings: Path,
    stream: bool = True,
    timeout: float | None = None,
    continuous: bool = False,
) -> int:
    """`flwr run` the Flower App in `app_dir` (HQ's) with HQ's settings (`continuous`: rounds from feedback
    counts, until stopped); streams its log; returns the exit status."""
    config = {"settings": str(settings.resolve()), "home": str(home.resolve()), "workdir": str(Path.cwd())}
    run_config = _config_file(
        flower_home(home) / "run-config.toml", {**config, **({"continuous": True} if continuous else {})}
    )
    command = [flower_executable("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(run_config)]
    if stream:
        command.append("--stream")
    return subprocess.run(command, env=flower_env(home), timeout=timeout).returncode


def start_flower(command: list[str], home: Path) -> subprocess.Popen[bytes]:
    """Start a Flower process in its own process group (so its `flower-superexec` children stop with it).

    It is told to end if the fedloop process that started it dies, so no SuperNode outlives its tenant service.
    """
    flower_home(home).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(launcher(command), env=flower_env(home), start_new_session=True)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (install from the main thread)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _set_when_ended(process: subprocess.Popen[bytes], ended: threading.Event) -> None:
    process.wait()
    ended.set()


def supervise_all(processes: dict[str, subprocess.Popen[bytes]]) -> tuple[str, int] | None:
    """Wait for SIGINT/SIGTERM or for any of `processes` to end by itself; returns (its name, its status) then.

    The processes are left running: the caller stops them (stop_flower), in the order it started them reversed.
    """
    stop = stop_on_signals()
    for process in processes.values():
        threading.Thread(target=_set_when_ended, args=(process, stop), daemon=True).start()
    stop.wait()
    for name, process in processes.items():
        if process.poll() is not None:
            return name, process.returncode
    return None


def stop_flower(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it if it has not ended within `grace_s`."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
