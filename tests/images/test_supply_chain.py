"""Supply chain of both images: each carries a CycloneDX SBOM that its build wrote from its lock
(every pinned distribution with its version, purl and the lock's sha256 hashes), the same file
images/build.sh copies out next to the image, and labels naming the base image by name and digest.
The hash-checking install itself is proved by the build succeeding with `--require-hashes`
(tests/images/test_inputs.py checks the Dockerfiles ask for it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.images.conftest import VERSION, built
from tests.images.oci import rootfs
from tests.images.test_inputs import lock_hashes

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

SBOM_IN_IMAGE = "usr/share/doc/kubetrain/sbom.cdx.json"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_image_carries_its_sbom_equal_to_the_lock(name: str) -> None:
    facts = built(name)
    assert facts.labels.get("dev.kubetrain.sbom") == "/" + SBOM_IN_IMAGE, facts.labels
    with rootfs(facts.ref) as root:
        inside = (root / SBOM_IN_IMAGE).read_bytes()
    cache = Path(os.environ.get("KUBETRAIN_CACHE", Path.home() / ".cache" / "kubetrain"))
    outside = cache / "images" / f"{name}-{VERSION}.cdx.json"
    assert outside.read_bytes() == inside, f"{outside} differs from the image's {SBOM_IN_IMAGE}"

    bom = json.loads(inside)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"].startswith("1."), bom.get("specVersion")
    components = {_norm(c["name"]): c for c in bom["components"]}
    pins = lock_hashes(name)
    assert components.keys() == pins.keys(), (sorted(components.keys() ^ pins.keys()))
    for dist, (version, hashes) in pins.items():
        c = components[dist]
        assert c["version"] == version and c["purl"].startswith("pkg:pypi/"), c
        assert c["purl"].endswith(f"@{version}"), c
        listed = {h["content"] for ref in c.get("externalReferences", []) for h in ref.get("hashes", [])
                  if h.get("alg") == "SHA-256"}
        assert listed == set(hashes), (dist, listed, hashes)


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_image_names_its_base_by_digest(name: str) -> None:
    labels = built(name).labels
    assert labels.get("org.opencontainers.image.base.name"), labels
    digest = labels.get("org.opencontainers.image.base.digest", "")
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64, labels
