"""The command line and settings validation."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedloop.cli import app
from fedloop.shared.settings import ConfigError, SimulationSection, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_keys_init_writes_private_files_0600(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "init", "--role", "tenant", "--name", "acme", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "acme.sm2.key.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "acme.sm4.key.json").stat().st_mode) == 0o600
    assert (tmp_path / "acme.sm2.pub.json").exists()
    private = (tmp_path / "acme.sm2.key.json").read_text()
    assert private.split('"sm2_private_key": "')[1][:64] not in result.output


def test_keys_init_refuses_bad_role_and_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["keys", "init", "--role", "boss", "--name", "x", "--out", str(tmp_path)])
    assert (
        bad.exit_code == 2 and "'boss' is not one of 'hq', 'tenant'" in bad.output
    )  # an Enum option: typer names the choices
    runner.invoke(app, ["keys", "init", "--role", "hq", "--name", "hq", "--out", str(tmp_path)])
    again = runner.invoke(app, ["keys", "init", "--role", "hq", "--name", "hq", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "already exist" in again.output


def test_shipped_demo_config_is_valid() -> None:
    settings = load_settings(ROOT / "configs" / "demo.toml")
    assert len(settings.federation.tenants) == 3 and settings.federation.rounds >= 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("[federation]\nround = 2\n", "unknown key"),
        ("[federation]\nrounds = 'two'\n", "federation.rounds: must be of type int"),
        ("[federation]\nrounds = 0\n", "federation.rounds: must be an integer >= 1"),
        ("[trainer]\nsteps = 1\n", "unknown section"),
        ("[simulation]\naccept_threshold = 0.2\nedit_threshold = 0.5\n", "edit_threshold"),
        ("not toml = = 1", "not valid TOML"),
        (
            "[train]\nmethod = 'ppo'\n",
            "train.method: must be one of 'sft', 'dpo', 'kto', 'sft_then_dpo' or 'sft_then_kto'",
        ),
        ("[lora]\ntarget_modules = ['q_proj', 3]\n", "lora.target_modules.1: must be of type string, got int 3"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "loader, text, message",
    [
        ("tenant", "[release]\ncanary_share = 0.5\nwidened_share = 0.3\n", "release.canary_share / widened_share"),
        ("tenant", '[metrics]\naddress = "nowhere"\n', "metrics.address: must be host:port"),
        ("tenant", '[tenant]\nnmae = "acme"\n', r"\[tenant\] has unknown key\(s\) \['nmae'\]; allowed: \['data_dir'"),
        ("hq", "[hq]\nport = 70000\n", r"hq.port: must be an integer in \[1, 65535\], got 70000"),
        ("hq", '[hq]\nport = "9300"\n', "hq.port: must be of type int"),
        ("hq", "[superlink]\nport = 1\n", r"unknown section\(s\) \['superlink'\]; allowed: \['hq'\]"),
    ],
)
def test_tenant_and_hq_configs_are_validated_on_start(tmp_path: Path, loader: str, text: str, message: str) -> None:
    from fedloop.client.tenant_settings import load_tenant_settings
    from fedloop.server.hq_settings import load_hq_settings

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        {"tenant": load_tenant_settings, "hq": load_hq_settings}[loader](path)
    assert str(path) in str(info.value)


def test_shipped_configs_are_valid_and_the_reference_is_current() -> None:
    import subprocess
    import sys
    import tomllib

    from fedloop.client.tenant_settings import TenantSettings, load_tenant_settings
    from fedloop.server.hq_settings import load_hq_settings

    load_tenant_settings(ROOT / "configs" / "tenant.toml")
    load_tenant_settings(ROOT / "configs" / "demo_tenant.toml")
    load_hq_settings(ROOT / "configs" / "hq.toml")
    production = load_settings(ROOT / "configs" / "federation.toml")  # what a real deployment uses
    assert "\n[simulation]" not in (ROOT / "configs" / "federation.toml").read_text()
    assert production.simulation == SimulationSection() and production.aggregation.min_tenants == 2
    shipped = tomllib.loads((ROOT / "configs" / "tenant.toml").read_text())  # issue 14: it said other defaults
    for name in TenantSettings.model_fields:
        defaults = getattr(TenantSettings(), name).model_dump()
        written = {
            key: tuple(value) if isinstance(value, list) else value for key, value in shipped.get(name, {}).items()
        }
        assert written == defaults, f"configs/tenant.toml [{name}] is not the defaults"
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    "arguments",
    [["--help"], ["status", "--help"], ["tenant", "serve", "--help"], ["versions", "--help"], ["demo", "--help"]],
)
def test_help_loads_no_heavy_library(arguments: list[str]) -> None:
    """`fedloop … --help` imports neither torch nor flwr nor spaCy (nor Presidio): help must be instant."""
    probe = (
        "import sys\nfrom fedloop.cli import main\nsys.argv = ['fedloop', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'flwr', 'spacy', 'presidio_analyzer', 'transformers', 'peft', 'ray'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout and done.stdout.strip().endswith("LOADED []"), done.stdout[-500:]


def test_every_side_plugs_its_commands_in() -> None:
    """The tenant, HQ and the simulation reach the root through their entry points (shared imports neither)."""
    names = {command.name for command in app.registered_commands} | {group.name for group in app.registered_groups}
    assert {
        "tenant",
        "vault",
        "samples",
        "release",
        "hq",
        "versions",
        "run",
        "demo",
        "status",
        "report",
        "audit",
        "keys",
        "certs",
        "model",
    } <= names
    rotate = CliRunner().invoke(app, ["keys", "rotate", "--help"])
    assert rotate.exit_code == 0 and "re-encrypt" in rotate.output


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path: Path, monkeypatch) -> None:
    """Issue 31: paths were relative to the working directory, so the same file meant other keys, another store
    and another model from another directory."""
    from fedloop.client.tenant_settings import load_tenant_settings
    from fedloop.server.hq_settings import load_hq_settings

    home = tmp_path / "acme"
    home.mkdir()
    (home / "tenant.toml").write_text('[tenant]\nname = "acme"\n[release]\nexport_dir = "lora"\n')
    (home / "hq.toml").write_text("[hq]\n")
    (home / "federation.toml").write_text('[paths]\nmodel = "models/m"\n[simulation]\ntenant_config = "t.toml"\n')
    monkeypatch.chdir(tmp_path)  # somewhere else
    tenant = load_tenant_settings(Path("acme/tenant.toml"))
    assert tenant.tenant.keys_dir == str(home / "keys") and tenant.store_path == home / "data" / "feedback.db"
    assert tenant.release.export_dir == str(home / "lora") and tenant.serve.api_keys_file == ""  # unset stays unset
    assert load_hq_settings(Path("acme/hq.toml")).home == home / "hq-home"
    federation = load_settings(Path("acme/federation.toml"))
    assert federation.paths.model == str(home / "models" / "m")
    assert federation.simulation.tenant_config == str(home / "t.toml")


def test_a_missing_config_names_where_it_was_looked_for_and_the_template(tmp_path: Path) -> None:
    """Issue 31: the guides' `tenant.toml` and the commands' default `configs/tenant.toml` disagreed, and the error
    said only `config file configs/tenant.toml not found`. Every command now looks for its file in the directory
    it runs in."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedloop"), "release", "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "config file tenant.toml not found" in message and str(tmp_path) in message
    assert "configs/" in message


def test_review_choices_are_enums_that_name_the_allowed_values(tmp_path: Path) -> None:
    """`samples review decide --decision` and `promote --to` refuse an unknown value before opening anything."""
    runner = CliRunner()
    config = tmp_path / "absent.toml"
    decided = runner.invoke(
        app, ["samples", "review", "decide", "s1", "--decision", "maybe", "--operator", "o", "--config", str(config)]
    )
    assert decided.exit_code == 2 and "'maybe' is not one of 'admit', 'reject'" in decided.output
    promoted = runner.invoke(
        app, ["samples", "review", "promote", "s1", "--to", "gold", "--operator", "o", "--config", str(config)]
    )
    assert promoted.exit_code == 2 and "'gold' is not one of" in promoted.output


def test_a_section_built_alone_checks_its_limits_and_the_reference_shows_them() -> None:
    """Single-field ranges live on the fields: a section validates alone, and docs/configuration.md lists each limit."""
    from pydantic import ValidationError

    from fedloop.client.tenant_settings import ServeSection
    from fedloop.shared.settings import TrainSection

    with pytest.raises(ValidationError, match="batch_size"):
        TrainSection(batch_size=0)
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServeSection(max_batch_size=257)
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert "| `batch_size` | integer | >= 1 |" in reference and "| `max_share` | number | (0, 1] |" in reference


def test_set_overrides_a_key_validated_like_the_file_and_reaches_a_run_through_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fedloop --set section.key=value`: the same validation as the file, the file and key named; an unknown
    section or a malformed override is refused; `fedloop run` submits a copy beside the file with it applied."""
    from fedloop.shared.overrides import OVERRIDES_ENV, effective_file, keep_overrides
    from fedloop.shared.settings import load_settings

    monkeypatch.setenv(OVERRIDES_ENV, "[]")  # restored after the test: overrides live in the environment
    runner = CliRunner()
    demo = str(ROOT / "configs" / "demo.toml")
    refused = runner.invoke(app, ["--set", "federation.rounds=0", "demo", "--config", demo])
    assert refused.exit_code == 2 and "federation.rounds: must be an integer >= 1, got 0" in " ".join(
        refused.output.split()
    )
    assert "with --set federation.rounds=0" in " ".join(refused.output.split())
    unknown = runner.invoke(app, ["--set", "nowhere.rounds=1", "demo", "--config", demo])
    assert unknown.exit_code == 2 and "no config file has a [nowhere] section" in " ".join(unknown.output.split())
    malformed = runner.invoke(app, ["--set", "rounds", "demo", "--config", demo])
    assert malformed.exit_code == 2 and "write section.key=value" in " ".join(malformed.output.split())

    settings = tmp_path / "federation.toml"
    settings.write_text('[federation]\nrounds = 3\n[paths]\nmodel = "models/tiny"\n')
    keep_overrides(["federation.rounds=1", 'federation.run_name="quick"'])
    loaded = load_settings(settings)
    assert loaded.federation.rounds == 1 and loaded.federation.run_name == "quick"
    copy = effective_file(settings, set(type(loaded).model_fields))
    assert copy.parent == settings.parent and load_settings(copy) == loaded  # relative paths mean the same
    assert "rounds = 3" in settings.read_text()  # the operator's file is left as it was


def test_the_flower_app_bundle_that_fedloop_run_submits_is_where_hq_looks() -> None:
    from fedloop.server.commands.hq import FLOWER_APP_DIR

    assert (FLOWER_APP_DIR / "pyproject.toml").is_file(), FLOWER_APP_DIR
