"""Writes this corpus (run from anywhere: `python tests/data/bad_specs/make.py`). Each case is one
file; expected.yaml holds the verdicts of `kubetrain validate` and of `kubectl apply
--dry-run=server` (the differential test checks both)."""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
HEAD = "apiVersion: kubetrain.dev/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: {name}\nspec:\n"


def job(body: str, name: str = "bad") -> str:
    return HEAD.format(name=name) + body


BOMB = "".join(
    [f"  a0: &a0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)]
)
# case name -> (bytes, validate verdict, server verdict, why)
CASES: dict[str, tuple[bytes, str, str, str]] = {
    "utf16-bom.yaml": (("\ufeff" + job("  training: {maxSteps: 3}\n")).encode("utf-16-le"), "accept", "accept",
                       "UTF-16 with a byte-order mark: kubectl decodes it, so validate does too"),
    "utf8-bom.yaml": (("\ufeff" + job("  training: {maxSteps: 3}\n")).encode("utf-8"), "accept", "accept",
                      "UTF-8 byte-order mark"),
    "latin1.yaml": (job("  workers: {image: caf\xe9}\n").encode("latin-1"), "reject", "accept",
                    "not UTF-8: kubectl silently turns the byte into U+FFFD; validate names the byte offset"),
    "int-2-63.yaml": (job("  training: {maxSteps: 9223372036854775808}\n").encode(), "reject", "reject",
                      "an integer beyond int64 reaches the API server as a float"),
    "int-huge.yaml": (job("  training: {seed: 1" + "0" * 400 + "}\n").encode(), "reject", "reject",
                      "a 401-digit integer"),
    "deep-nesting.yaml": (job("  deepspeed: {x: " + "[" * 2000 + "]" * 2000 + "}\n").encode(), "reject", "any",
                          "2000 levels: validate refuses beyond 64 (the YAML parsers' own limits differ)"),
    "lr-inf.yaml": (job("  optimizer: {lr: .inf}\n").encode(), "reject", "reject",
                    "JSON has no Infinity (kubectl cannot send it)"),
    "lr-nan-in-deepspeed.yaml": (job("  deepspeed: {optimizer: {params: {lr: .nan}}}\n").encode(), "reject",
                                 "reject", "NaN in a free-form field"),
    "name-too-long.yaml": (job("  {}\n", name="a" * 60).encode(), "reject", "reject",
                           "60 characters: longer than 51, worker host names would be cut"),
    "name-dotdot.yaml": (job("  {}\n", name="'../../x'").encode(), "reject", "reject",
                         "`kubetrain local` would write outside ./runs"),
    "name-abs.yaml": (job("  {}\n", name="/abs").encode(), "reject", "reject", "an absolute path as a name"),
    "name-dots.yaml": (job("  {}\n", name="a.b").encode(), "reject", "reject",
                       "a DNS subdomain (the API server's own rule) but not a label"),
    "name-missing.yaml": (b"apiVersion: kubetrain.dev/v1alpha1\nkind: TrainingJob\nmetadata: {}\nspec: {}\n",
                          "reject", "reject", "kubectl needs a name"),
    "billion-laughs.yaml": (job(BOMB).encode(), "reject", "reject",
                            "a 1 KB alias bomb (10^9 values): refused in milliseconds"),
    "maxsteps-string.yaml": (job("  training: {maxSteps: '300'}\n").encode(), "reject", "reject",
                             "no string -> integer coercion"),
    "maxsteps-yes.yaml": (job("  training: {maxSteps: yes}\n").encode(), "reject", "reject",
                          "yes is a boolean in YAML 1.1 (kubectl's YAML)"),
    "maxsteps-true.yaml": (job("  training: {maxSteps: true}\n").encode(), "reject", "reject", "a boolean"),
    "maxsteps-float.yaml": (job("  training: {maxSteps: 3.5}\n").encode(), "reject", "reject", "not integral"),
    "betas-above-one.yaml": (job("  optimizer: {betas: [1.5, 0.999]}\n").encode(), "reject", "reject",
                             "Adam needs betas in [0, 1)"),
    "betas-negative.yaml": (job("  optimizer: {betas: [0.9, -0.1]}\n").encode(), "reject", "reject",
                            "Adam needs betas in [0, 1)"),
    "eps-zero.yaml": (job("  optimizer: {eps: 0}\n").encode(), "reject", "reject", "eps must be > 0"),
    "nul-escaped-in-path.yaml": (job('  data: {type: text, path: "a\\0b"}\n').encode(), "reject", "reject",
                                 "a NUL in a path fails only when the file is opened"),
    "nul-raw.yaml": (job("  training: {maxSteps: 3}\n").encode() + b"# \x00\n", "reject", "reject",
                     "a raw NUL byte: YAML allows no control characters"),
    "duplicate-key.yaml": (job("  training: {maxSteps: 3}\n  training: {maxSteps: 4}\n").encode(), "reject",
                           "accept", "kubectl keeps the last silently; validate refuses (the API server refuses "
                           "duplicates in a JSON body)"),
    "binary-tag.yaml": (job("  workers: {image: !!binary aGVsbG8=}\n").encode(), "reject", "accept",
                        "!!binary has no JSON form: kubectl sends the decoded bytes as a string"),
    "local-tag.yaml": (job("  workers: {image: !shell echo}\n").encode(), "reject", "accept",
                       "a local tag: kubectl drops it; validate refuses it"),
    "timestamp-tag.yaml": (job("  workers: {image: !!timestamp 2001-12-14}\n").encode(), "reject", "any",
                           "!!timestamp has no JSON form"),
    "too-large.yaml": (job("  deepspeed: {x: '" + "x" * (1 << 20) + "'}\n").encode(), "reject", "reject",
                       "over 1 MiB (kubectl apply's last-applied annotation caps an object at 256 KiB)"),
    "dmodel-not-divisible.yaml": (job("  model: {dModel: 66, nHeads: 4}\n").encode(), "reject", "reject",
                                  "the attention splits dModel into nHeads heads"),
    "nheads-vs-preset.yaml": (job("  model: {preset: 124M, nHeads: 5}\n").encode(), "reject", "reject",
                              "768 (the preset's dModel) is not divisible by 5"),
    "subpath-dotdot.yaml": (job("  checkpoint: {storage: {claimName: c, subPath: ../x}}\n").encode(), "reject",
                            "reject", "pods refuse a subPath with '..'"),
    "subpath-other-job.yaml": (job("  checkpoint: {storage: {claimName: c, subPath: other-job}}\n").encode(),
                               "reject", "reject", "another job's directory needs storage.shared: true"),
    "subpath-shared.yaml": (job("  checkpoint: {storage: {claimName: c, subPath: team/ckpt, shared: true}}\n").encode(),
                            "accept", "accept", "sharing a directory is allowed when asked for by name"),
    "deepspeed-too-many-keys.yaml": (
        job("  deepspeed: {" + ", ".join(f"k{i}: {i}" for i in range(129)) + "}\n").encode(), "reject", "reject",
        "more than 128 top-level keys in spec.deepspeed"),
    "env-too-many.yaml": (job("  workers:\n    env: [" + ", ".join(f"{{name: V{i}, value: x}}" for i in range(257))
                              + "]\n").encode(), "reject", "reject", "more than 256 env entries"),
    "image-with-space.yaml": (job("  workers: {image: 'my image'}\n").encode(), "reject", "reject",
                              "an image reference has no whitespace"),
    "service-account-caps.yaml": (job("  workers: {serviceAccountName: Admin}\n").encode(), "reject", "reject",
                                  "not a DNS subdomain: pods would be refused"),
    "powersgd-start-0.yaml": (job("  parallelism: {sync: {mode: powerSGD, powerSGD: {startStep: 0}}}\n").encode(),
                              "reject", "reject", "torch's PowerSGD hook compresses only from DDP's third step"),
    "unknown-field.yaml": (job("  trainig: {maxSteps: 3}\n").encode(), "reject", "reject",
                           "strict field validation"),
    "not-utf8-bom32.yaml": (b"\xff\xfe\x00\x00" + "a: 1\n".encode("utf-32-le"), "reject", "reject",
                            "UTF-32 is not read by kubectl either"),
    "key-is-list.yaml": (job("  deepspeed:\n    ? [a, b]\n    : 1\n").encode(), "reject", "reject",
                         "a key must be a string"),
    "null-key.yaml": (job("  deepspeed: {null: 1}\n").encode(), "reject", "reject", "null cannot be a JSON key"),
    "document-list.yaml": (b"- 1\n- 2\n", "reject", "reject", "not an object"),
    "empty.yaml": (b"", "reject", "reject", "no document"),
    "yaml-error.yaml": (job("  training: {maxSteps: [unclosed\n").encode(), "reject", "reject", "not YAML"),
    "maxsteps-integral-float.yaml": (job("  training: {maxSteps: 3.0}\n").encode(), "accept", "accept",
                                     "kubectl writes 3.0 as the JSON number 3"),
    "lr-exponent.yaml": (job("  optimizer: {lr: 1e-3}\n").encode(), "accept", "accept",
                         "1e-3 is a number for kubectl (PyYAML alone would read a string)"),
    "date-as-image.yaml": (job("  workers: {image: 2001-12-14}\n").encode(), "accept", "accept",
                           "kubectl keeps timestamp-looking values as strings"),
    "bool-y.yaml": (job("  model: {tieEmbeddings: y}\n").encode(), "accept", "accept", "y is true for kubectl"),
    "benign-alias.yaml": (job("  training: &t {maxSteps: 3}\n  elastic: {maxRestarts: 1}\n").encode(), "accept",
                          "accept", "an anchor without a bomb"),
    "too-big-for-memory.yaml": (job("  model: {preset: 1.3B}\n  training: {maxSteps: 1, globalBatchSize: 1024, "
                                    "microBatchSize: 1024}\n").encode(), "accept",
                                "accept", "valid everywhere, but its activations alone need terabytes: `kubetrain local` refuses it "
                                "with the planner's numbers"),
}


def main() -> None:
    expected = []
    for name, (data, validate, server, why) in CASES.items():
        (HERE / name).write_bytes(data)
        expected.append({"file": name, "validate": validate, "server": server, "why": why})
    header = "# Generated by make.py: the verdict of `kubetrain validate` and of `kubectl apply --dry-run=server`.\n"
    (HERE / "expected.yaml").write_text(header + yaml.safe_dump(expected, sort_keys=False, width=110))


if __name__ == "__main__":
    main()
