from pathlib import Path

import pytest

from peoplescloud import names, settings
from peoplescloud.errors import ConfigError


def test_defaults_file_env_flags_in_that_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s = settings.Settings(home=tmp_path, ssh_port=2300)
    (tmp_path / "config.toml").write_text(settings.to_toml(s))
    assert settings.load(tmp_path).ssh_port == 2300
    monkeypatch.setenv("PC_SSH_PORT", "2400")
    monkeypatch.setenv("PC_BUILD_MAX_PUSH_MB", "7")
    loaded = settings.load(tmp_path)
    assert loaded.ssh_port == 2400 and loaded.build.max_push_mb == 7
    assert settings.load(tmp_path, ssh_port=2500).ssh_port == 2500


def test_bad_values_are_refused_when_set(tmp_path: Path):
    (tmp_path / "config.toml").write_text('[node]\nruntime = "kubernetes"\n')
    with pytest.raises(ConfigError, match="runtime must be one of"):
        settings.load(tmp_path)
    (tmp_path / "config.toml").write_text("[node]\nsh_port = 22\n")
    with pytest.raises(ConfigError, match="unknown setting.*sh_port"):
        settings.load(tmp_path)
    with pytest.raises(ConfigError, match="between 0 and 65535"):
        settings.Settings(home=tmp_path, ssh_port=70000)


@pytest.mark.parametrize("name", ["mybot", "a1", "my-bot-2", "x" * 30])
def test_good_app_names(name: str):
    assert names.check_app_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "1bot", "My", "my_bot", "x" * 31, "../etc", "a.b"])
def test_bad_app_names(name: str):
    with pytest.raises(ConfigError, match="invalid app name"):
        names.check_app_name(name)


def test_numbers_from_the_environment_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PC_BUILD_TIMEOUT", "abc")
    with pytest.raises(ConfigError, match=r"\[build\] timeout must be a number"):
        settings.load(tmp_path)
    monkeypatch.setenv("PC_BUILD_TIMEOUT", "30")
    assert settings.load(tmp_path).build.timeout == 30
    (tmp_path / "config.toml").write_text("[shares]\nmax_apps = 0\n")
    with pytest.raises(ConfigError, match=r"\[shares\] max_apps must be at least 1"):
        settings.load(tmp_path)


def test_an_instance_cpu_share_is_a_positive_fraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    assert settings.load(tmp_path).shares.instance_cpus == 0.25
    monkeypatch.setenv("PC_SHARES_INSTANCE_CPUS", "0.5")
    assert settings.load(tmp_path).shares.instance_cpus == 0.5
    monkeypatch.setenv("PC_SHARES_INSTANCE_CPUS", "0")
    with pytest.raises(ConfigError, match=r"\[shares\] instance_cpus must be at least 0.01"):
        settings.load(tmp_path)


@pytest.mark.parametrize("name", ["Ann", "1ann", "a b", "x" * 33, ""])
def test_bad_user_names(name: str):
    with pytest.raises(ConfigError, match="invalid user name"):
        names.check_user_name(name)


def test_ipfs_api_names_a_kubo_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert settings.load(tmp_path).ipfs.api == ""  # the daemon starts its own kubo
    s = settings.Settings(home=tmp_path, ipfs=settings.IpfsSettings(api="http://127.0.0.1:5001/"))
    assert s.ipfs.api == "http://127.0.0.1:5001"
    (tmp_path / "config.toml").write_text(settings.to_toml(s))
    assert settings.load(tmp_path).ipfs.api == "http://127.0.0.1:5001"
    monkeypatch.setenv("PC_IPFS_API", "https://kubo.example.org:5443")
    assert settings.load(tmp_path).ipfs.api == "https://kubo.example.org:5443"
    monkeypatch.setenv("PC_IPFS_API", "")
    assert settings.load(tmp_path).ipfs.api == ""
    monkeypatch.setenv("PC_IPFS_API", "127.0.0.1:5001")
    with pytest.raises(ConfigError, match=r"\[ipfs\] api '127.0.0.1:5001' must start with http"):
        settings.load(tmp_path)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1:5001", "must start with http:// or https://"),
        ("http://127.0.0.1", "needs a host and a port"),
        ("http://:5001", "needs a host and a port"),
        ("http://127.0.0.1:0", "needs a host and a port"),
        ("http://127.0.0.1:70000", "is not a URL"),
        ("http://127.0.0.1:api", "is not a URL"),
        ("http://127.0.0.1:5001/api/v0", "must be only scheme, host and port"),
        ("http://user:pw@127.0.0.1:5001", "must be only scheme, host and port"),
    ],
)
def test_bad_ipfs_api_urls_are_refused(url: str, reason: str):
    with pytest.raises(ConfigError, match=r"\[ipfs\] api .*" + reason):
        settings.IpfsSettings(api=url)


def test_a_trailing_newline_is_no_part_of_a_name(tmp_path: Path):
    """`$` matches before a final "\\n": the whole name must match."""
    with pytest.raises(ConfigError, match="invalid app name"):
        names.check_app_name("mybot\n")
    with pytest.raises(ConfigError, match="invalid user name"):
        names.check_user_name("alice\n")
    with pytest.raises(ConfigError, match="invalid node name"):
        settings.Settings(home=tmp_path, name="n1\n")


def test_router_section_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "config.toml").write_text("[router]\nheader_timeout = 2.5\nlogs = false\n")
    monkeypatch.setenv("PC_ROUTER_MAX_HEADERS", "50")
    loaded = settings.load(tmp_path)
    assert loaded.router.header_timeout == 2.5 and loaded.router.max_headers == 50
    assert loaded.router.logs is False and loaded.router.idle_timeout == 60
    assert loaded.router.front == "auto"
    monkeypatch.setenv("PC_ROUTER_FRONT", "none")
    assert settings.load(tmp_path).router.front == "none"
    monkeypatch.delenv("PC_ROUTER_FRONT")
    monkeypatch.setenv("PC_ROUTER_LOGS", "true")
    assert settings.load(tmp_path).router.logs is True
    assert "[router]\nheader_timeout = 10.0" in settings.to_toml(settings.Settings(home=tmp_path))
    monkeypatch.delenv("PC_ROUTER_LOGS")
    for bad, message in [
        ("header_timeout = 0", "at least 0.1"),
        ('max_header_kb = "big"', "must be a number"),
        ('logs = "maybe"', "must be true or false"),
        ('front = "haproxy"', 'front must be "auto", "nginx" or "none"'),
    ]:
        (tmp_path / "config.toml").write_text(f"[router]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            settings.load(tmp_path)
