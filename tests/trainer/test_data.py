"""Corpora and the global-batch plan (single process)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kubetrain.api import DataSpec
from kubetrain_trainer.data import SyntheticCorpus, make_plan, open_corpus, prepare_data
from kubetrain_trainer.errors import DataError, SpecError

pytestmark = pytest.mark.trainer


def test_synthetic_is_deterministic_and_learnable() -> None:
    c = SyntheticCorpus(256, 32, seed=7)
    a = c.get(range(10))
    assert a.shape == (10, 33) and a.dtype == np.int64 and a.max() < 256
    np.testing.assert_array_equal(c.get([3, 4]), a[3:5])  # sample i depends only on i
    np.testing.assert_array_equal(SyntheticCorpus(256, 32, seed=7).get(range(10)), a)
    assert not np.array_equal(c.get(range(10), "eval"), a)
    assert c.entropy < 0.3 * math.log(256)  # far below the uniform line
    # every transition is one of the token's few successors
    assert all(a[r, t + 1] in c.successors[a[r, t]] for r in range(10) for t in range(32))


def test_plan_covers_the_global_batch_at_any_world_size() -> None:
    for world in (1, 2, 4):
        seen: list[int] = []
        for rank in range(world):
            plan = make_plan(8, 2, world, rank)
            assert plan.accum_steps == 8 // (world * 2)
            for m in range(plan.accum_steps):
                seen += list(plan.micro_indices(3, m))
        assert sorted(seen) == list(range(24, 32))
    # Any world size up to the global batch splits it (unevenly if need be); a larger one cannot.
    with pytest.raises(SpecError, match="smaller than the world size"):
        make_plan(1, None, 2, 0)


def test_prepare_data_and_token_shards(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "corpus"
    text.mkdir()
    (text / "a.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 256 * 20, dtype=np.uint8).tobytes())
    (text / "b.md").write_bytes(np.random.default_rng(1).integers(0, 256, 12 * 300, dtype=np.uint8).tobytes())
    meta = prepare_data([text], tmp_path / "shards", token_dtype="uint16", shard_tokens=1000)
    assert meta["num_tokens"] == 256 * 20 + 12 * 300 and meta["vocab_size"] == 256
    shards, num_tokens = meta["shards"], meta["num_tokens"]
    assert isinstance(shards, list) and isinstance(num_tokens, int)
    assert len(shards) == math.ceil(num_tokens / 1000)
    assert json.loads((tmp_path / "shards" / "metadata.json").read_text())["dtype"] == "uint16"
    corpus = open_corpus(DataSpec(type="tokens", path=str(tmp_path / "shards")), vocab_size=256, seq_len=16, seed=0)
    stream = np.concatenate([np.fromfile(text / "a.txt", np.uint8), np.fromfile(text / "b.md", np.uint8)])
    n = (len(stream) - 1) // 16
    batch = corpus.get(range(5))
    for row in batch:  # each sample is a real window of the stream (crossing shard edges)
        starts = [w * 16 for w in range(n) if np.array_equal(stream[w * 16 : w * 16 + 17], row)]
        assert starts
    n_train = corpus.num_samples("train")
    assert n_train is not None
    epoch0 = {tuple(r) for r in corpus.get(range(n_train))}
    assert len(epoch0) == n_train  # a permutation: no window twice per epoch
    with pytest.raises(DataError, match="vocabulary"):
        open_corpus(DataSpec(type="tokens", path=str(tmp_path / "shards")), vocab_size=100, seq_len=16, seed=0)


def test_text_and_uint32_shards(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "t.txt").write_text("abcdefgh" * 50)
    corpus = open_corpus(DataSpec(type="text", path=str(tmp_path / "t.txt")), vocab_size=256, seq_len=8, seed=1)
    assert bytes(corpus.get([0])[0].astype(np.uint8)[:8]) == b"abcdefgh"
    d = tmp_path / "u32"
    d.mkdir()
    np.arange(70000, 70000 + 100, dtype=np.uint32).tofile(d / "s.bin")
    c32 = open_corpus(DataSpec(type="tokens", path=str(d), token_dtype="uint32"), vocab_size=None, seq_len=9, seed=0)
    row = c32.get([0])[0]
    assert row.min() >= 70000 and np.all(np.diff(row) == 1)
    with pytest.raises(DataError, match="too few"):
        open_corpus(DataSpec(type="text", path=str(tmp_path / "t.txt")), vocab_size=256, seq_len=1000, seed=0)


def test_loader_prefetches_and_surfaces_errors() -> None:
    import torch

    from kubetrain_trainer.data import Loader

    class Flaky(SyntheticCorpus):
        def get(self, indices, split="train"):  # type: ignore[no-untyped-def]
            if indices[0] >= 3 * 4:  # step 3 of a 4-sample global batch
                raise OSError("disk went away")
            return super().get(indices, split)

    loader = Loader(Flaky(64, 8, 0), make_plan(4, 2, 1, 0), torch.device("cpu"))
    try:
        first = loader.step_batch(0)
        assert len(first) == 2 and first[0][0].shape == (2, 8)
        torch.testing.assert_close(first[0][0][:, 1:], first[0][1][:, :-1])  # targets = inputs shifted
        loader.step_batch(1)
        loader.step_batch(2)  # prefetches step 3 in the background, which fails
        with pytest.raises(DataError, match="disk went away"):
            loader.step_batch(3)
    finally:
        loader.close()


def test_prepare_data_imports_without_torch() -> None:
    """`kubetrain prepare-data` runs where torch may be absent: the data package needs only numpy."""
    import subprocess
    import sys

    from .harness import base_env

    code = "import sys; from kubetrain_trainer.data import prepare_data, make_plan; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=base_env(), check=True, timeout=60)
