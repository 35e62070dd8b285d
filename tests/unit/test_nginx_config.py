"""The ingress template renders to a configuration the real Nginx accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from switchyard.devstack.stack import StackConfig, find_nginx, render_nginx


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = render_nginx(StackConfig(state_dir=tmp_path))
    text = conf.read_text()
    assert "{{" not in text
    assert "proxy_buffering off;" in text and "$connection_upgrade" in text and "client_max_body_size 10485760;" in text
    r = subprocess.run([find_nginx(), "-t", "-c", str(conf), "-p", str(tmp_path / "nginx"), "-e", str(tmp_path / "err.log")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
