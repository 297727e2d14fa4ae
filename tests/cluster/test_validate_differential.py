"""`kubetrain validate` against the real API server: one verdict for every spec.

A seeded, bounded hypothesis generator mutates valid TrainingJobs (the examples): every leaf field
of the CRD's schema gets values of the wrong type, at and beyond its bounds, strings with spaces,
control characters or too many characters; fields are deleted, misspelt or added; names, nesting,
sizes and encodings vary. For each file (>= 300, plus the checked-in corpus
tests/data/bad_specs) the accept/reject of `kubetrain validate`'s admission verdict
(`admission_problems`: what the API server is meant to decide) must equal `kubectl apply
--dry-run=server`'s; validate must not raise and must finish within its limits. Disagreements
print the spec and both verdicts.

The checks only the trainer's resolution can make (`SEMANTIC_CHECKS`) come on top: they may
refuse what the server accepts, never the reverse. Files `kubetrain validate` refuses while reading
by design (not UTF-8, duplicate keys, non-JSON tags, nesting deeper than 64; see
tests/data/bad_specs/README.md) are not compared.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kubetrain.api.specfile import SpecFileError, loads_documents
from kubetrain.api.validate import _schema, admission_problems, validate_object
from tests.cluster.helpers import Cluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "manifests" / "examples").glob("*.yaml"))]
CORPUS = REPO / "tests" / "data" / "bad_specs"
GENERATED = 310
THREADS = 8
BY_DESIGN = ("not valid UTF", "duplicate key", "has no JSON equivalent", "nested deeper than", "nesting depth")


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    props = node.get("properties")
    if not props:
        return [(path, node)]
    return [leaf for name, sub in props.items() for leaf in _leaves(sub, (*path, name))]


LEAVES = _leaves(_schema()["properties"]["spec"])
LONG = "x" * 4097


def _values(schema: dict[str, Any]) -> list[Any]:
    """Candidate values for one leaf: valid ones, edges and every wrong kind."""
    kind = schema.get("type")
    common: list[Any] = [None, "", [], {}, "3", True]
    if "enum" in schema:
        return [*schema["enum"], "bogus", schema["enum"][0].upper(), 1, *common]
    if kind == "integer":
        lo = int(schema.get("minimum", 0))
        hi = schema.get("maximum")
        edges = [lo, lo - 1, lo + 1, 2**63 - 1, 2**63, 2**64 + 1, -(2**63) - 1, 3.0, 3.5, 1e21, "yes", False]
        return edges + ([int(hi), int(hi) + 1] if hi is not None else []) + common
    if kind == "number":
        return [0, 0.5, 1, 1.0, 1.5, -0.1, 0.999, 1e-12, 1e300, 2**63, "0.1", *common]
    if kind == "boolean":
        return [True, False, "true", "yes", 1, 0, *common]
    if kind == "string":
        return ["ok", "valid-name", "Admin", "a b", "a\x00b", "a\tb", "/abs/path", "../x", "a/../b", "pkg.mod:fn",
                "x" * 63, "x" * 64, "x" * 254, LONG, "é", 5, *common]
    if kind == "array":
        return [[], [0.9, 0.999], [1.5, 0.9], [{"name": "A", "value": "b"}], ["x"], [{}] * 257, "x", {}, None]
    return [{}, {"a": "b"}, {"a": 1}, {f"k{i}": i for i in range(129)}, {"a": {"b": {"c": [1, {"d": None}]}}},
            {"a": "x" * 64}, {"A B": "c"}, [], "x", None]


NAMES = ["ok", "a" * 51, "a" * 52, "a" * 63, "Abc", "a.b", "a_b", "-a", "a-", "../x", "/abs", "9lives", "a--b", ""]
TYPOS = ["trainig", "maxStep", "replica", "lr_", "betas2", "extra"]


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """One mutated TrainingJob (a Python object, written as YAML later)."""
    obj = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["leaf"] * 6 + ["delete", "unknown", "name", "nest", "model", "deepspeed"]))
        spec = obj.setdefault("spec", {})
        if what == "leaf":
            path, schema = draw(st.sampled_from(LEAVES))
            parent = spec
            for part in path[:-1]:
                parent = parent.setdefault(part, {}) if isinstance(parent.get(part, {}), dict) else {}
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(_values(schema))))
        elif what == "delete" and spec:
            spec.pop(draw(st.sampled_from(sorted(spec))), None)
        elif what == "unknown":
            section = draw(st.sampled_from(["", "training", "workers", "optimizer", "metadata"]))
            target = obj.setdefault("metadata", {}) if section == "metadata" else \
                (spec.setdefault(section, {}) if section else spec)
            if isinstance(target, dict):
                target[draw(st.sampled_from(TYPOS))] = 1
        elif what == "name":
            obj.setdefault("metadata", {})["name"] = draw(st.sampled_from(NAMES))
        elif what == "nest":
            depth = draw(st.integers(1, 40))
            value: Any = 1
            for _ in range(depth):
                value = {"k": value} if draw(st.booleans()) else [value]
            spec["deepspeed"] = {"nested": value}
        elif what == "model":
            spec["model"] = {k: v for k, v in {
                "preset": draw(st.sampled_from([None, "tiny", "124M", "350M", "1.3B"])),
                "dModel": draw(st.sampled_from([None, 64, 66, 96, 768, 1000])),
                "nHeads": draw(st.sampled_from([None, 1, 2, 3, 4, 5, 12])),
            }.items() if v is not None}
        else:
            spec["deepspeed"] = {f"k{i}": i for i in range(draw(st.integers(120, 130)))}
    return obj


def _encode(obj: dict[str, Any], encoding: str) -> bytes:
    text = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=200)
    if encoding == "utf-16":
        return "\ufeff".encode("utf-16-le") + text.encode("utf-16-le")
    if encoding == "latin-1":
        return text.encode("utf-8") + b"# caf\xe9\n"
    return text.encode(encoding)


@dataclass
class Case:
    name: str
    data: bytes
    expected_server: str | None = None  # from the corpus: "accept" | "reject" | "any"
    validate: str = ""
    by_design: bool = False
    seconds: float = 0.0
    problems: str = ""
    server: str = ""
    server_out: str = ""


def _judge(case: Case) -> None:
    """validate's verdict (admission only) and limits; raises nothing but SpecFileError."""
    started = time.process_time()
    try:
        docs = loads_documents(case.data, case.name)
    except SpecFileError as exc:
        case.seconds = time.process_time() - started
        case.validate, case.problems = "reject", str(exc)
        case.by_design = any(marker in str(exc) for marker in BY_DESIGN)
        return
    admission = [str(p) for d in docs for p in admission_problems(d)]
    everything = [str(p) for d in docs for p in validate_object(d)]
    case.seconds = time.process_time() - started
    assert not any("internal error" in line for line in everything), everything
    assert set(admission) <= set(everything) or not admission, (admission, everything)
    case.validate = "reject" if admission else "accept"
    case.problems = "; ".join(admission)


def _apply(cluster: Cluster, namespace: str, tmp: Path, case: Case) -> None:
    path = tmp / case.name
    path.write_bytes(case.data)
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False, timeout=60)
    case.server = "accept" if proc.returncode == 0 else "reject"
    case.server_out = (proc.stdout + proc.stderr).strip()[-600:]


def _report(case: Case) -> str:
    try:
        shown = case.data.decode("utf-8")
    except UnicodeDecodeError:
        shown = repr(case.data)
    return (f"--- {case.name}: validate {case.validate} ({case.problems[:400] or 'no problem'}), "
            f"kubectl {case.server} ({case.server_out[:400]})\n{shown[:1500]}")


@pytest.fixture(scope="module")
def judged_generated(cluster: Cluster, trainingjob_crd: str, tmp_path_factory: pytest.TempPathFactory
                     ) -> list[Case]:
    namespace = "validate-differential"
    cluster.kubectl("create", "namespace", namespace, check=False)
    tmp = tmp_path_factory.mktemp("differential")
    cases: list[Case] = []

    seen: set[bytes] = set()

    @settings(max_examples=GENERATED + 120, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(obj=specs(), encoding=st.sampled_from(["utf-8"] * 12 + ["utf-16", "utf-8-sig", "latin-1"]))
    def generate(obj: dict[str, Any], encoding: str) -> None:
        data = _encode(obj, encoding)
        if data not in seen and len(cases) < GENERATED:
            seen.add(data)
            cases.append(Case(f"gen-{len(cases):03d}.yaml", data))

    generate()
    assert len(cases) >= 300, f"only {len(cases)} distinct specs generated"
    for case in cases:
        _judge(case)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda c: _apply(cluster, namespace, tmp, c), cases))
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return cases


def test_generated_specs_one_verdict(judged_generated: list[Case]) -> None:
    cases = judged_generated
    assert len(cases) >= 300
    compared = [c for c in cases if not c.by_design]
    disagreements = [c for c in compared if c.validate != c.server]
    assert not disagreements, f"{len(disagreements)} of {len(compared)} disagree:\n" + "\n".join(
        _report(c) for c in disagreements[:15])
    # both verdicts occur in quantity: the generator is not trivially one-sided
    accepted = sum(c.server == "accept" for c in compared)
    assert 30 <= accepted <= len(compared) - 100, accepted
    slow = [(c.name, round(c.seconds, 2)) for c in cases if c.seconds > 1.0]
    assert not slow, slow
    for c in cases:
        if c.by_design:
            assert c.validate == "reject"


def test_corpus_verdicts(cluster: Cluster, trainingjob_crd: str, tmp_path: Path) -> None:
    namespace = "validate-corpus"
    cluster.kubectl("create", "namespace", namespace, check=False)
    expected = yaml.safe_load((CORPUS / "expected.yaml").read_text())
    cases = [Case(c["file"], (CORPUS / c["file"]).read_bytes(), c["server"]) for c in expected]
    for case in cases:
        _judge(case)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda c: _apply(cluster, namespace, tmp_path, c), cases))
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    wrong = [c for c in cases if c.expected_server != "any" and c.server != c.expected_server]
    assert not wrong, "the API server's verdict changed:\n" + "\n".join(_report(c) for c in wrong)
    # where validate and kubectl differ, it is only by design and validate is the stricter one
    differ = [c for c in cases if c.server != c.validate]
    assert all(c.by_design and c.validate == "reject" for c in differ), "\n".join(_report(c) for c in differ)
