"""`pc init` reads settings the way every other command does: defaults <- PC_* <- flags."""

import os
import subprocess
import sys
from pathlib import Path


def test_init_takes_the_environment_and_flags_win(tmp_path: Path, user_key: Path):
    env = {**os.environ, "PC_HOME": str(tmp_path / "home"), "PC_NAME": "envnode"}
    env |= {"PC_SSH_PORT": "15222", "PC_ROUTER_PORT": "15080", "PC_IPFS_API_PORT": "15001"}
    r = subprocess.run(
        [sys.executable, "-m", "peoplescloud.cli", "init", "--admin-key", f"{user_key}.pub"]
        + ["--router-port", "15081"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Node envnode created" in r.stdout
    assert "ssh 15222, router 15081" in r.stdout  # the flag beats PC_ROUTER_PORT
    config = (tmp_path / "home" / "config.toml").read_text()
    for line in ('name = "envnode"', "ssh_port = 15222", "router_port = 15081"):
        assert line in config
    assert "api_port = 15001" in config
