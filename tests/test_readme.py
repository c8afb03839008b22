"""The README's examples, run as written: its `curl` lines against `conversations serve`
(after HighLevel's documented examples were posted), and its `keys create` line. A user
copies them first; each must answer what the README says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conversations.database import create_engine
from tests.api_support import wait_folded
from tests.conftest import REPO, migrated_database, start_server
from tests.helpers import KeyPair, Server, fixture, fixture_names

README = (REPO / "README.md").read_text()

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture(scope="module")
def own_database(server_url: str) -> Iterator[str]:
    """The README's ids are HighLevel's documented ones, which other tests post too."""
    with migrated_database(server_url, "conversations_readme") as url:
        yield url


@pytest.fixture(scope="module")
def trial(own_database: str) -> Iterator[Server]:
    """`CONVERSATIONS_WEBHOOK_VERIFY=off conversations serve`, as in "Try it"."""
    server = start_server(own_database, KeyPair.generate(), CONVERSATIONS_WEBHOOK_VERIFY="off")
    yield server
    server.stop()


def shell(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def code_blocks(heading: str) -> str:
    """The sh code blocks of a README section."""
    start = README.index(heading)
    end = README.find("\n## ", start + 1)
    section = README[start : end if end > 0 else None]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))


def test_try_it_posts_the_sms_example_then_a_duplicate(trial: Server) -> None:
    block = code_blocks("### Try it")
    (post,) = re.findall(r"^curl .*?(?<!\\)\n", block, re.S | re.M)
    post = post.replace("http://127.0.0.1:8000", trial.url)

    first, second = shell(post), shell(post)

    stored, duplicate = json.loads(first.stdout), json.loads(second.stdout)
    assert stored["outcome"] == "stored", first
    assert set(stored) == {"outcome", "position", "eventId", "streamId", "version"}
    assert stored["streamId"] == "fcanlLgpbQgQhderivVs"
    assert duplicate["outcome"] == "duplicate"
    assert duplicate["position"] == stored["position"]


def test_every_read_example_answers_200(trial: Server, own_database: str, tmp_path: Path) -> None:
    for name in fixture_names():
        response = trial.post(fixture(name), scheme="none")
        assert response.status_code in (200, 201), (name, response.text)
    engine = create_engine(own_database)
    try:
        wait_folded(engine)
    finally:
        engine.dispose()
    environment = {"DATABASE_URL": own_database, "CONVERSATIONS_LOG_LEVEL": "warning"}
    created = subprocess.run(
        [sys.executable, "-m", "conversations", "keys", "create", "--all-locations"],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()

    lines = [
        line
        for heading in ("### HighLevel-compatible endpoints", "### Beyond HighLevel")
        for line in code_blocks(heading).splitlines()
        if line.startswith("curl ") and "/events/stream" not in line  # that one never ends
    ]
    assert len(lines) >= 10
    for line in lines:
        command = f'H="Authorization: Bearer $KEY"; API={trial.url}; ' + line.replace(
            "curl ", "curl -s -w '\\n%{http_code}' ", 1
        )
        result = shell(command, KEY=key)
        body, _, status = result.stdout.rpartition("\n")
        assert status == "200", (line, body)
        assert json.loads(body), line
