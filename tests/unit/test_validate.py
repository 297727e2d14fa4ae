"""`kubetrain validate`: the invalid-spec table, examples, round trips and the CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kubetrain import api
from kubetrain.api.crd import build_crd
from kubetrain.api.validate import cel_problems, validate_object

REPO = Path(__file__).resolve().parents[2]
TABLE = yaml.safe_load((Path(__file__).parent / "data" / "invalid_specs.yaml").read_text())
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def job(spec: dict[str, Any], name: str = "t") -> dict[str, Any]:
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def test_table_is_big_enough() -> None:
    assert len(TABLE) >= 25
    assert len({c["name"] for c in TABLE}) == len(TABLE)


@pytest.mark.parametrize("case", TABLE, ids=[c["name"] for c in TABLE])
def test_invalid_spec(case: dict[str, Any]) -> None:
    problems = validate_object(job(case["spec"]))
    assert problems, "expected the spec to be rejected"
    matching = [p for p in problems if p.path == case["field"]]
    assert matching, f"no problem at {case['field']}: {[str(p) for p in problems]}"
    assert any(case["message"] in str(p) for p in matching), [str(p) for p in matching]
    assert all(p.fix for p in matching), "every problem says how to fix it"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert validate_object(doc) == []


def _openapi_validator() -> jsonschema.Draft4Validator:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)  # OpenAPI v3.0 bounds use draft-4 booleans


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_round_trip(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    model = api.TrainingJob.model_validate(doc)
    dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    _openapi_validator().validate(dumped)
    assert api.TrainingJob.model_validate(dumped) == model
    # Dumping only what was set reproduces the user's spec exactly.
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True)["spec"] == doc["spec"]


def test_schema_rejects_what_models_reject() -> None:
    validator = _openapi_validator()
    for case in TABLE:
        if "unknown field" in case["message"]:
            continue  # the API server rejects those by strict field validation, not the schema
        schema_errors = list(validator.iter_errors(job(case["spec"])))
        cel = cel_problems(job(case["spec"]))
        assert schema_errors or cel, case["name"]


def test_defaults_resolve() -> None:
    spec = api.TrainingJob.model_validate(job({})).spec
    assert spec.workers.replicas == 1 and spec.workers.min == 1 and spec.workers.max == 1
    assert spec.workers.procs == 1
    spec = api.TrainingJob.model_validate(job({"workers": {"replicas": 2, "gpusPerWorker": 8}})).spec
    assert spec.workers.procs == 8


def _updated(old_spec: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(old_spec)
    for key, value in change.items():
        new[key] = value
    return new


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"preset": "124M"}}, "spec.model"),
        ({"parallelism": {"strategy": "zero3"}}, "spec.parallelism.strategy"),
        ({"precision": {"dtype": "bf16"}}, "spec.precision"),
    ],
)
def test_immutable_unless_suspended(change: dict[str, Any], field: str) -> None:
    old = {"model": {"preset": "tiny"}, "parallelism": {"strategy": "ddp"}, "precision": {"dtype": "fp32"}}
    problems = validate_object(job(_updated(old, change)), old=job(old))
    assert [p.path for p in problems] == [field]
    assert "suspend it first" in problems[0].fix
    suspended = {**old, "runPolicy": {"suspend": True}}
    assert validate_object(job({**_updated(old, change), "runPolicy": {"suspend": True}}), old=job(suspended)) == []


def test_replicas_mutable() -> None:
    old = {"workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4}}
    new = {"workers": {"replicas": 4, "minReplicas": 1, "maxReplicas": 4}}
    assert validate_object(job(new), old=job(old)) == []


def test_header_problems() -> None:
    bad = job({})
    bad["apiVersion"] = "kubetrain.dev/v1"
    assert [p.path for p in validate_object(bad)] == ["apiVersion"]
    assert validate_object([1, 2])[0].path == "(document)"


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetrain", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_cli_valid_examples_exit_zero() -> None:
    result = _cli("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("is valid") == len(EXAMPLES)


def test_cli_invalid_exits_one_naming_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(job({"workers": {"replicas": 3, "maxReplicas": 2}, "trainig": {}})))
    result = _cli("validate", str(f))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert any("spec.workers.replicas: replicas must be <= maxReplicas" in line for line in lines)
    assert any("spec.trainig: unknown field 'trainig'; fix: did you mean 'training'?" in line for line in lines)
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [("spec: [unclosed", "not valid YAML"), ("", "no document"), ("- 1\n- 2\n", "must be a TrainingJob object")],
)
def test_cli_bad_files_no_traceback(tmp_path: Path, content: str, expected: str) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(content)
    result = _cli("validate", str(f))
    assert result.returncode == 1
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_missing_file() -> None:
    result = _cli("validate", "/nonexistent/job.yaml")
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_crd_command_prints_crd() -> None:
    result = _cli("crd")
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout) == build_crd()


def test_import_operator_and_kubetrain_from_repo_root() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import operator, kubetrain; assert hasattr(operator, 'itemgetter')"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("storage", "ok"),
    [
        ({"claimName": "c"}, True),  # default: the job's own directory
        ({"claimName": "c", "subPath": "alice"}, True),
        ({"claimName": "c", "subPath": "alice/run-2"}, True),
        ({"claimName": "c", "subPath": "bob"}, False),  # another job's directory
        ({"claimName": "c", "subPath": "alicex"}, False),  # a prefix of the name is not the name
        ({"claimName": "c", "subPath": "team/alice"}, False),
        ({"claimName": "c", "subPath": "bob", "shared": False}, False),
        ({"claimName": "c", "subPath": "bob", "shared": True}, True),  # shared on purpose
        ({"claimName": "c", "subPath": "team/ckpt", "shared": True}, True),
    ],
)
def test_checkpoint_subpath_stays_in_the_jobs_own_directory(storage: dict[str, Any], ok: bool) -> None:
    """A job sharing a claim cannot read or plant another job's checkpoints by naming its directory,
    unless the author asks for it with storage.shared."""
    problems = validate_object(job({"checkpoint": {"storage": storage}}, name="alice"))
    if ok:
        assert problems == []
    else:
        assert [p.path for p in problems] == ["spec.checkpoint.storage.subPath"], problems
        assert "job's name or a directory below it" in problems[0].message
        assert "shared: true" in problems[0].fix


def test_operator_passes_leave_cel_to_the_api_server() -> None:
    """The operator validates a job's spec without loading cel-python (with lark and pendulum,
    ~6 MiB of its RSS); `kubetrain validate` in the same process still evaluates the CEL rules."""
    bad = job({"workers": {"replicas": 2, "minReplicas": 3}, "model": {"preset": "tiny"}})
    code = (
        "import json, sys; from kubetrain.controller import handlers; "
        "from kubetrain.controller.reconcile import spec_problems; "
        f"spec_problems({job({'workers': {'replicas': 2}, 'model': {'preset': 'tiny'}})!r}); "
        "loaded = 'celpy' in sys.modules; "
        "from kubetrain.api.validate import cel_problems; "
        f"print(json.dumps([loaded, [str(p) for p in cel_problems({bad!r})]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, problems = json.loads(out)
    assert loaded is False
    assert problems == [str(p) for p in cel_problems(bad)] and problems, problems

