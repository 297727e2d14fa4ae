"""Bad input: every class of nasty spec gets one clear line per problem, exit 1 (64 from
`kubetrain local`), never a traceback, a hang or a half-started job.

Reading is checked against kubectl's own YAML semantics (go-yaml v2 through sigs.k8s.io/yaml, then
JSON): the verdicts of the API server itself are in tests/cluster/test_validate_differential.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetrain import api
from kubetrain.api import specfile
from kubetrain.api.constants import EXIT_INVALID_SPEC, JOB_NAME_MAX_LENGTH, MAX_WORKERS
from kubetrain.api.specfile import SpecFileError, loads_documents
from kubetrain.api.validate import admission_problems, validate_object
from kubetrain.tools.memfit import cpu_fit_problem

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "bad_specs"
EXPECTED: list[dict[str, str]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
REJECTED = [c["file"] for c in EXPECTED if c["validate"] == "reject"]
HEAD = "apiVersion: kubetrain.dev/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: t\nspec:\n"


def job(spec: dict[str, Any], name: str = "t") -> dict[str, Any]:
    return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def read(text: str | bytes) -> Any:
    return loads_documents(text, "f.yaml")[0]


def verdict(data: bytes) -> list[str]:
    """validate's lines for a file's bytes (empty when valid)."""
    try:
        docs = loads_documents(data, "f.yaml")
    except SpecFileError as exc:
        return [str(exc)]
    return [str(p) for d in docs for p in validate_object(d)]


# --------------------------------------------------------------------------------- the corpus


def test_corpus_is_current() -> None:
    """make.py writes the corpus; the checked-in files are what it writes."""
    ns: dict[str, Any] = {"__name__": "corpus", "__file__": str(CORPUS / "make.py")}
    exec(compile((CORPUS / "make.py").read_text(), "make.py", "exec"), ns)
    cases = ns["CASES"]
    assert sorted(cases) == sorted(c["file"] for c in EXPECTED)
    for name, (data, *_rest) in cases.items():
        assert (CORPUS / name).read_bytes() == data, f"{name} differs: run python tests/data/bad_specs/make.py"
    assert len(REJECTED) >= 35


@pytest.mark.parametrize("case", EXPECTED, ids=[c["file"] for c in EXPECTED])
def test_corpus_verdict_in_one_line_each_within_limits(case: dict[str, str]) -> None:
    verdict((CORPUS / "benign-alias.yaml").read_bytes())  # warm: imports, schema, compiled CEL
    started = time.process_time()
    lines = verdict((CORPUS / case["file"]).read_bytes())
    elapsed = time.process_time() - started
    assert ("reject" if lines else "accept") == case["validate"], lines
    assert elapsed < 1.0, f"{elapsed:.2f}s of CPU"
    for line in lines:
        assert "\n" not in line and len(line) < 600, line
        assert "Traceback" not in line and "internal error" not in line, line
        assert "fix:" in line or ": not valid YAML:" in line or "byte offset" in line or " than " in line \
            or "no document" in line, f"no way to fix it: {line}"


def _rss_cli(args: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `kubetrain ARGS` in a fresh interpreter; its own peak RSS in bytes comes back on stderr.

    VmHWM of /proc/self/status, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec,
    so a child of a large pytest process (torch loaded by earlier tests) would report the
    parent's size at fork time."""
    code = ("import sys\nfrom kubetrain.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
            "print('MAXRSS', hwm, file=sys.stderr)\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    rss = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS")) * 1024
    return proc, rss


def test_cli_on_the_whole_corpus_one_line_per_problem_exit_one_bounded_memory() -> None:
    files = [str(CORPUS / c["file"]) for c in EXPECTED]
    proc, rss = _rss_cli(["validate", "-q", *files])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Traceback" not in out and "internal error" not in out, out[-2000:]
    for case in EXPECTED:
        named = [line for line in out.splitlines() if f"bad_specs/{case['file']}" in line and "note:" not in line]
        assert bool(named) == (case["validate"] == "reject"), (case["file"], named)
    assert rss < 200 * 2**20, f"peak RSS {rss / 2**20:.0f} MiB"


# ------------------------------------------------------------------- reading as kubectl reads


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-3", 0.001), ("1.5e3", 1500), ("3.0", 3), ("08", 8), ("0x1F", 31), ("0o17", 15), ("-0b11", -3),
        ("1_000", 1000), (".5", 0.5), ("y", True), ("Yes", True), ("on", True), ("n", False), ("OFF", False),
        ("~", None), ("null", None), ("2001-12-14", "2001-12-14"), ("1:20", "1:20"), ("1e400", "1e400"),
        ("9223372036854775807", 9223372036854775807), ("9223372036854775808", 9.223372036854775808e18),
        ("1e21", 1e21), ("abc", "abc"), ("=", "="), ("'300'", "300"), ("!!str 300", "300"),
        ("!!float 1", 1), ("+12", 12),
    ],
)
def test_scalars_resolve_like_kubectl(text: str, value: Any) -> None:
    got = read(f"a: {text}\n")["a"]
    assert got == value and type(got) is type(value), (got, value)


def test_non_finite_scalars_are_read_then_refused_with_their_path() -> None:
    assert math.isinf(read("a: .inf\n")["a"]) and math.isnan(read("a: .NaN\n")["a"])
    lines = verdict((HEAD + "  optimizer: {lr: -.inf}\n  deepspeed: {x: [1, .nan]}\n").encode())
    assert any(line.startswith("spec.optimizer.lr: is not a finite number") for line in lines), lines
    assert any(line.startswith("spec.deepspeed.x[1]: is not a finite number") for line in lines), lines


def test_keys_become_json_strings_like_kubectl() -> None:
    assert read("on: 1\n3: 2\nfalse: 3\n") == {"true": 1, "3": 2, "false": 3}
    for bad in ("null: 1\n", "? [a]\n: 1\n", "? {a: 1}\n: 1\n"):
        with pytest.raises(SpecFileError, match="key"):
            read(bad)


def test_duplicate_keys_refused_merge_keys_allowed() -> None:
    with pytest.raises(SpecFileError, match=r"line 2, column 1: not valid YAML: duplicate key 'a' \(also on line 1\)"):
        read("a: 1\na: 2\n")
    with pytest.raises(SpecFileError, match="duplicate key 'a'"):
        read("x: {b: 1, a: 1, a: 2}\n")
    assert read("base: &b {x: 1, z: 2}\nuse:\n  <<: *b\n  x: 3\n")["use"] == {"x": 3, "z": 2}


@pytest.mark.parametrize("tagged", ["!!binary aGVsbG8=", "!shell rm", "!!timestamp 2001-12-14", "!!set {a: null}",
                                    "!!omap [{a: 1}]", "!!python/object:os.system x", "!!int abc", "!!bool 3",
                                    "!!str {a: 1}", "!!map x"])
def test_tags_without_json_form_refused(tagged: str) -> None:
    with pytest.raises(SpecFileError, match="line 1, column 4: not valid YAML"):
        read(f"a: {tagged}\n")


def test_alias_bomb_refused_fast_and_small() -> None:
    data = (CORPUS / "billion-laughs.yaml").read_bytes()
    assert len(data) < 1500
    started = time.process_time()
    with pytest.raises(SpecFileError, match=f"more than {specfile.MAX_NODES} values once aliases are expanded"):
        loads_documents(data)
    assert time.process_time() - started < 1.0
    assert read("a: &x [1, 2]\nb: *x\nc: *x\n") == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}


@pytest.mark.parametrize("depth", [specfile.MAX_DEPTH + 1, 999, 1001, 100_000])
def test_deep_nesting_refused_without_recursion(depth: int) -> None:
    for text in ("[" * depth + "]" * depth, "a: " + "{b: " * depth + "1" + "}" * depth):
        started = time.process_time()
        with pytest.raises(SpecFileError, match="nest"):
            loads_documents(text)
        assert time.process_time() - started < 1.0
    block = "".join("  " * i + "- \n" for i in range(specfile.MAX_DEPTH + 1))
    with pytest.raises(SpecFileError, match=f"deeper than {specfile.MAX_DEPTH}"):
        loads_documents(block)
    loads_documents("[" * specfile.MAX_DEPTH + "]" * specfile.MAX_DEPTH)  # the limit itself is fine


def test_size_capped_before_parsing() -> None:
    with pytest.raises(SpecFileError, match=f"larger than {specfile.MAX_BYTES} bytes"):
        loads_documents(b"a: " + b"x" * specfile.MAX_BYTES)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"a: caf\xe9\n", "byte offset 6 (line 1): byte 0xe9 is not valid UTF-8"),
        (b"a: 1\nb: \xff\xfe\n", "byte offset 8 (line 2): byte 0xff is not valid UTF-8"),
        (b"a: 1\nb: x\x00\n", "byte offset 9 (line 2): control character U+0000"),
        (b"a: \x1b[31m\n", "byte offset 3 (line 1): control character U+001B"),
        ("\ufeffa: \x07".encode("utf-16-le"), "byte offset 8 (line 1): control character U+0007"),
        (b"\xff\xfea", "byte offset 2 (line 1): byte 0x61 is not valid UTF-16-LE"),
    ],
)
def test_encoding_problems_name_the_byte_offset(data: bytes, where: str) -> None:
    with pytest.raises(SpecFileError) as err:
        loads_documents(data, "f.yaml")
    assert str(err.value).startswith(f"f.yaml: {where}"), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_byte_order_marks_decoded_like_kubectl(encoding: str) -> None:
    assert read("a: é\n".encode(encoding)) == {"a": "é"}
    big_endian = "\ufeffa: é\n".encode("utf-16-be")
    assert read(big_endian) == {"a": "é"}


def test_escaped_nul_is_a_string_refused_where_it_matters() -> None:
    assert read('a: "x\\0y"\n') == {"a": "x\x00y"}
    lines = verdict((HEAD + '  data: {type: text, path: "a\\0b"}\n').encode())
    assert lines == ["spec.data.path: 'a\\x00b' has the wrong format; fix: match ^[^\\x00-\\x1f\\x7f]*$"]


def test_read_errors_are_one_line_and_name_the_place() -> None:
    with pytest.raises(SpecFileError) as err:
        loads_documents("spec:\n  a: [1\n", "job.yaml")
    assert str(err.value).startswith("job.yaml: line 3, column 1: not valid YAML:") and "\n" not in str(err.value)


# ------------------------------------------------------------------------- strict types, ranges


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"training": {"maxSteps": "300"}}, "spec.training.maxSteps: must be an integer (got '300')"),
        ({"training": {"maxSteps": True}}, "spec.training.maxSteps: must be an integer (got True)"),
        ({"training": {"maxSteps": 3.5}}, "spec.training.maxSteps: must be an integer (got 3.5)"),
        ({"model": {"tieEmbeddings": "yes"}}, "spec.model.tieEmbeddings: must be true or false (got 'yes')"),
        ({"model": {"tieEmbeddings": 1}}, "spec.model.tieEmbeddings: must be true or false (got 1)"),
        ({"optimizer": {"lr": "0.1"}}, "spec.optimizer.lr: must be a number (got '0.1')"),
        ({"workers": {"image": 5}}, "spec.workers.image: must be a string (got 5)"),
        ({"optimizer": {"betas": [1.5, 0.9]}}, "spec.optimizer.betas[0]: must be < 1.0 (got 1.5)"),
        ({"optimizer": {"betas": [0.9, -0.1]}}, "spec.optimizer.betas[1]: must be >= 0.0 (got -0.1)"),
        ({"optimizer": {"betas": [0.9, 1.0]}}, "spec.optimizer.betas[1]: must be < 1.0 (got 1.0)"),
        ({"optimizer": {"eps": 0}}, "spec.optimizer.eps: must be > 0.0 (got 0)"),
        ({"optimizer": {"lr": 0}}, "spec.optimizer.lr: must be > 0.0 (got 0)"),
        ({"optimizer": {"lr": math.inf}}, "spec.optimizer.lr: is not a finite number"),
        ({"training": {"seed": 2**64}}, "spec.training.seed: is beyond the 64-bit integer range"),
        ({"deepspeed": {f"k{i}": i for i in range(129)}}, "spec.deepspeed: at most 128 keys allowed"),
        ({"workers": {"labels": {"a": "x" * 64}}}, "spec.workers.labels.a: at most 63 characters allowed"),
        ({"workers": {"image": "a b"}}, "spec.workers.image: 'a b' has the wrong format"),
        ({"checkpoint": {"storage": {"subPath": "a/../b"}}}, "spec.checkpoint.storage.subPath: subPath must be a "
         "relative path without '..'"),
        ({"parallelism": {"sync": {"mode": "powerSGD", "powerSGD": {"startStep": 1}}}},
         "spec.parallelism.sync.powerSGD.startStep: must be >= 2 (got 1)"),
        ({"model": {"preset": "350M", "nHeads": 5}}, "spec.model.dModel: dModel must be divisible by nHeads"),
    ],
)
def test_admission_refuses_with_one_line(spec: dict[str, Any], line: str) -> None:
    lines = [str(p) for p in admission_problems(job(spec))]
    assert len(lines) == 1 and lines[0].startswith(line), lines


def test_admission_accepts_the_json_kubectl_writes() -> None:
    assert admission_problems(job({"training": {"maxSteps": 3}, "optimizer": {"lr": 1, "betas": [0, 0.999]},
                                   "model": {"preset": "124M", "nHeads": 4}})) == []


# ------------------------------------------------------------------------------ metadata.name


def test_max_name_fits_every_child_name_uncut() -> None:
    from kubetrain.controller import names

    name = "a" * JOB_NAME_MAX_LENGTH
    assert admission_problems(job({}, name)) == []
    assert names.hostname(name, MAX_WORKERS - 1) == f"{name}-worker-{MAX_WORKERS - 1}"
    assert names.job_label(name) == name and names.service_name(name) == name
    assert names.pod_name(name, MAX_WORKERS - 1, 99, 99) == f"{name}-worker-{MAX_WORKERS - 1}-99-99"


@pytest.mark.parametrize("name", ["a" * (JOB_NAME_MAX_LENGTH + 1), "../../x", "/abs", "a/b", "A", "a.b", "-a",
                                  "a-", "", "a_b", "a\x00b", 5])
def test_bad_names_refused(name: Any) -> None:
    problems = admission_problems(job({}, name))
    assert [p.path for p in problems] == ["metadata.name"], [str(p) for p in problems]
    with pytest.raises(ValueError):
        api.TrainingJob.model_validate(job({}, name))


def test_metadata_checks() -> None:
    def lines(meta: dict[str, Any]) -> list[str]:
        return [str(p) for p in admission_problems({**job({}), "metadata": meta})]

    assert lines({"name": "ok", "labels": {"app.kubernetes.io/name": "x"}, "annotations": {"a/b": "any thing"}}) == []
    assert lines({}) == ["metadata.name: is required; fix: add metadata.name"]
    assert lines({"name": "ok", "nmae": "x"})[0].startswith("metadata.nmae: unknown field")
    assert lines({"name": "ok", "labels": {"a b": "x"}})[0].startswith("metadata.labels['a b']: the key")
    assert lines({"name": "ok", "labels": {"a": "x y"}})[0].startswith("metadata.labels['a']: a label value")
    assert lines({"name": "ok", "labels": {"a": 1}})[0].startswith("metadata.labels['a']: must be a string")


# ----------------------------------------------------------------------- never raises, never hangs

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from(["workers", "model", "data", "training", "parallelism", "precision", "optimizer",
                           "lrSchedule", "deepspeed", "checkpoint", "elastic", "runPolicy", "trainig"])


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(section=_fields, key=st.text(max_size=16), value=_json, meta=_json)
def test_validate_never_raises(section: str, key: str, value: Any, meta: Any) -> None:
    for obj in (job({section: {key: value}}), job({section: value}), {**job({}), "metadata": meta}, value):
        problems = validate_object(obj)
        assert all("internal error" not in str(p) for p in problems), [str(p) for p in problems]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_reading_never_raises_anything_else(data: bytes) -> None:
    try:
        docs = loads_documents(data)
    except SpecFileError as exc:
        assert "\n" not in str(exc)
        return
    json.dumps(docs, allow_nan=True)  # plain JSON values only


# ------------------------------------------------------------------------------- kubetrain local


def test_memory_fit_uses_the_planners_numbers() -> None:
    spec = api.TrainingJobSpec.model_validate({"model": {"preset": "1.3B"}})
    line = cpu_fit_problem(spec, 2, available=16 * 10**9)
    assert line is not None and line.startswith("spec.model: GPT 1.3B")
    assert "GB per process" in line and "x 2 process(es)" in line and "16.0 GB available" in line and "fix:" in line
    assert cpu_fit_problem(api.TrainingJobSpec.model_validate({}), 2, available=16 * 10**9) is None


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        out += [int(c) for c in children]
    return out


@pytest.mark.parametrize("name", [*REJECTED, "too-big-for-memory.yaml"])
def test_local_refuses_before_starting_anything(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetrain.cli import local

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(file=str(CORPUS / name), workers=1, procs_per_worker=None, run_dir=None, quiet=True)
    before = set(_children(os.getpid()))  # the session's own (a control plane started by an earlier tier)
    assert local.run(args) == EXIT_INVALID_SPEC
    err = capsys.readouterr().err
    assert err.strip() and "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "nothing may be written for a refused spec"
    assert set(_children(os.getpid())) - before == set(), "no process may be started for a refused spec"


def test_local_cli_exit_64_end_to_end(tmp_path: Path) -> None:
    for name in ("billion-laughs.yaml", "name-dotdot.yaml", "betas-above-one.yaml"):
        proc = subprocess.run([sys.executable, "-m", "kubetrain", "local", str(CORPUS / name)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == EXIT_INVALID_SPEC, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []
