"""``hostkit check`` on a machine with podman and the engine image: it names the runtime and proves the isolation
with a probe container, and it notices when a container is not isolated."""
from __future__ import annotations

import json

import pytest

from hostkit import isolation
from hostkit.isolation import Image, probe, runtime_reachable
from hostkit.local.engine import EngineError
from hostkit.local.image import PYTHON_IN_ROOT, engine_root

from ..support import hostkit

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def image() -> Image:
    if not runtime_reachable("podman"):
        pytest.fail("this test needs podman (make test installs it, as root)", pytrace=False)
    try:
        return Image(rootfs=engine_root(), python=PYTHON_IN_ROOT)
    except EngineError as error:
        pytest.fail(f"this test needs the engine image: {error}", pytrace=False)


def test_it_reports_podman_and_an_isolated_engine(image):
    report = json.loads(hostkit("check", "--json").stdout)
    found = next(c for c in report["checks"] if c["name"] == "container")
    assert found["status"] == "ok", found
    assert found["data"]["runtime"] == "podman" and found["data"]["isolated"] is True
    assert found["detail"].startswith("podman: the engine runs isolated (no network, no capabilities")
    assert found["data"]["seen"] == {"uid": 65534, "cap_eff": "0000000000000000", "no_new_privs": "1",
                                     "seccomp": "2", "root_writable": False, "interfaces": ["lo"],
                                     "memory_limit": 256 * 2**20, "user_namespace": False}


def test_the_probe_tells_a_container_that_is_not_isolated(image, monkeypatch):
    loose = isolation.isolation_args

    def without(*names):
        def args(*a, **k):
            found, kept, skip = loose(*a, **k), [], 0
            for index, arg in enumerate(found):
                if skip:
                    skip -= 1
                elif arg in names:
                    skip = 1 if arg != "--read-only" else 0
                else:
                    kept.append(arg)
            return kept
        return args

    monkeypatch.setattr(isolation, "isolation_args", without("--cap-drop", "--user", "--read-only"))
    isolated, detail, seen = probe("podman", image)
    assert not isolated
    assert detail == "not isolated: it ran as root, it kept capabilities, its root was writable", detail
