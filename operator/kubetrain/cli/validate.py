"""`kubetrain validate FILE...`: exit 0 when every TrainingJob is valid, else 1 with one
line per problem (field path, what is wrong, how to fix it)."""

from __future__ import annotations

import argparse
import sys

from kubetrain.api.specfile import SpecFileError, load_documents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="TrainingJob YAML/JSON files ('-' = stdin)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    parser.add_argument("--explain", action="store_true",
                        help="also print what each spec.deepspeed key becomes: typed field, value and source "
                        "(written, auto, typed, default)")


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            docs = load_documents(path)
        except SpecFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        # imported only once a file is read: a file refused while reading costs no model import
        from kubetrain.api.validate import validate_object

        for i, doc in enumerate(docs):
            where = path if len(docs) == 1 else f"{path}#{i + 1}"
            problems = validate_object(doc)
            notes = notes_for(doc)  # also next to errors: they often explain them
            for p in problems:
                print(f"{where}: {p}")
            for n in notes:
                print(f"{where}: note: {n}")
            if getattr(args, "explain", False):
                for line in explain_for(doc):
                    print(f"{where}: explain: {line}")
            if problems:
                failed = True
            elif not args.quiet:
                name = (doc.get("metadata") or {}).get("name", "?")
                print(f"{where}: TrainingJob {name} is valid")
    return 1 if failed else 0


def notes_for(doc: dict) -> list[str]:
    """Non-fatal remarks (e.g. DeepSpeed keys Kubetrain ignores), filled by later modules."""
    from kubetrain.api.validate import NOTE_PROVIDERS

    return [n for provider in NOTE_PROVIDERS for n in provider(doc)]


def explain_for(doc: dict) -> list[str]:
    """`--explain`: each DeepSpeed key -> typed field, value, source (kubetrain.api.deepspeed.explain)."""
    from kubetrain.api.deepspeed import explain_object

    return explain_object(doc)
