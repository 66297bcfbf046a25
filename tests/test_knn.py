"""The weighted kNN probe: known answers, scikit-learn as the reference, chunking, dtypes, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from zsclust.errors import ConfigError, InvalidDataError
from zsclust.knn import DEFAULT_KS, auto_chunk_size, knn_accuracy, knn_predict


def blobs(n, classes, dim=16, spread=1.5, seed=0, labels=None):
    """Points around one random centre per class, and their labels (``labels`` renames the classes)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    X = (centres[y] + rng.normal(scale=spread, size=(n, dim))).astype(np.float32)
    return X, (np.asarray(labels)[y] if labels is not None else y)


def sklearn_predict(bank, bank_labels, queries, k, temperature):
    """scikit-learn's weighted kNN with the probe's weights: its cosine distance is d = 1 - s."""
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1.0 - d) / temperature))
    return clf.fit(bank, bank_labels).predict(queries)


def test_separable_classes_score_one_at_every_k():
    # Three tight clusters on orthogonal axes with 30, 150 and 150 bank rows: at k=200 a class-3
    # query's neighbours are 30 of its class and 170 of the others (similarity ~0), but exp(s/0.07)
    # lets its own class win.
    rng = np.random.default_rng(0)
    labels = np.array([3, 7, 42])
    axes = np.eye(3, 8) * 10
    sizes = [30, 150, 150]
    yb = np.repeat(labels, sizes)
    bank = np.repeat(axes, sizes, axis=0) + rng.normal(scale=0.5, size=(330, 8))
    yq = np.tile(labels, 20)
    queries = np.tile(axes, (20, 1)) + rng.normal(scale=0.5, size=(60, 8))
    acc = knn_accuracy(bank.astype(np.float32), yb, queries.astype(np.float32), yq)
    assert acc == {k: 1.0 for k in DEFAULT_KS}
    # the same neighbours voting with equal weight (a huge T) lose at k=200: the weighting is real
    flat = knn_accuracy(bank.astype(np.float32), yb, queries.astype(np.float32), yq, ks=200, temperature=1e6)
    assert flat[200] == pytest.approx(2 / 3)  # every class-3 query is outvoted


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_scikit_learn_weighted_cosine_knn(temperature):
    bank, yb = blobs(400, 6, labels=[-5, 0, 2, 9, 10, 31], seed=1)
    queries, _ = blobs(150, 6, seed=2)
    ks = (1, 3, 10, 20, 100, 200)
    ours = knn_predict(bank, yb, queries, ks=ks, temperature=temperature)
    # -5 is unlabelled: scikit-learn gets the labelled bank only
    labelled = yb >= 0
    for k in ks:
        theirs = sklearn_predict(bank[labelled], yb[labelled], queries, k, temperature)
        np.testing.assert_array_equal(ours[k], theirs, err_msg=f"k={k}")


def test_accuracy_is_the_fraction_of_correct_labelled_queries():
    bank, yb = blobs(300, 5, seed=3)
    queries, yq = blobs(120, 5, seed=4)
    yq[::4] = -1  # unlabelled queries: classified, not scored
    preds = knn_predict(bank, yb, queries, ks=(1, 20))
    acc = knn_accuracy(bank, yb, queries, yq, ks=(1, 20))
    scored = yq >= 0
    for k in (1, 20):
        assert acc[k] == pytest.approx(np.mean(preds[k][scored] == yq[scored]))
        assert len(preds[k]) == 120  # unlabelled queries get a prediction too
    assert 0.3 < acc[20] < 1.0  # overlapping blobs: neither chance nor trivial


@pytest.mark.parametrize("chunk_size", [1, 7, 33, 100, 137, 500])
def test_chunking_gives_the_one_block_result(chunk_size):
    bank, yb = blobs(300, 7, seed=5)
    queries, yq = blobs(137, 7, seed=6)
    one_block = knn_predict(bank, yb, queries, ks=DEFAULT_KS, chunk_size=len(queries))
    chunked = knn_predict(bank, yb, queries, ks=DEFAULT_KS, chunk_size=chunk_size)
    for k in DEFAULT_KS:
        np.testing.assert_array_equal(chunked[k], one_block[k], err_msg=f"k={k}")


def test_memory_budget_sets_the_chunk_size():
    # 300 bank rows and 7 classes: 4 * 307 bytes per query; a 10 kB budget means chunks of 8 queries
    assert auto_chunk_size(300, 7, 10_000) == 8
    assert auto_chunk_size(10**9, 10, 1) == 1  # never zero
    assert auto_chunk_size(1_000_000, 1000, 512 * 2**20) == 134  # 1M bank: 134 queries, 512 MiB
    bank, yb = blobs(300, 7, seed=5)
    queries, _ = blobs(137, 7, seed=6)
    small = knn_predict(bank, yb, queries, ks=(1, 20), memory_budget=10_000)
    default = knn_predict(bank, yb, queries, ks=(1, 20), memory_budget=None)  # None: the default budget
    whole = knn_predict(bank, yb, queries, ks=(1, 20), chunk_size=137)
    for k in (1, 20):
        np.testing.assert_array_equal(small[k], whole[k])
        np.testing.assert_array_equal(default[k], whole[k])


def test_k_larger_than_the_bank_votes_with_the_whole_bank():
    bank, yb = blobs(6, 3, seed=7)
    yb[:3] = [0, 1, 2]  # every class present
    queries, _ = blobs(40, 3, seed=8)
    with pytest.warns(UserWarning, match=r"k=\[10, 50\] exceeds the 6 labelled bank rows"):
        preds = knn_predict(bank, yb, queries, ks=(6, 10, 50))
    # the reference: every bank row votes with exp(s / 0.07)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    w = np.exp((q.astype(np.float64) @ b.T.astype(np.float64)) / 0.07)
    votes = np.stack([w[:, yb == c].sum(axis=1) for c in range(3)], axis=1)
    expected = votes.argmax(axis=1)
    for k in (6, 10, 50):
        np.testing.assert_array_equal(preds[k], expected)


def test_unlabelled_bank_rows_do_not_vote():
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    # the exact match is unlabelled: the query's nearest labelled neighbour is row 1 (class 4)
    assert knn_predict(bank, np.array([-1, 4, 8]), queries, ks=1)[1].tolist() == [4]
    assert knn_predict(bank, np.array([5, 4, 8]), queries, ks=1)[1].tolist() == [5]
    # with the unlabelled row dropped, the bank has 2 rows: k=3 uses both (and says so)
    with pytest.warns(UserWarning, match="exceeds the 2 labelled bank rows"):
        assert knn_predict(bank, np.array([-1, 4, 8]), queries, ks=3)[3].tolist() == [4]


@pytest.mark.parametrize("order", [[9, 4], [4, 9]])
def test_a_tied_vote_goes_to_the_smallest_label(order):
    theta = 0.3
    bank = np.array([[np.cos(theta), np.sin(theta)], [np.cos(theta), -np.sin(theta)]], dtype=np.float32)
    queries = np.array([[1.0, 0.0]], dtype=np.float32)  # equally similar to both rows
    assert knn_predict(bank, np.array(order), queries, ks=2)[2].tolist() == [4]


def test_a_query_class_missing_from_the_bank_counts_as_wrong():
    bank = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    queries = np.array([[1.0, 0.1], [0.1, 1.0]], dtype=np.float32)
    assert knn_accuracy(bank, np.array([0, 1]), queries, np.array([0, 2]), ks=1) == {1: 0.5}


def test_float16_and_torch_inputs_give_the_float32_result():
    bank, yb = blobs(300, 5, seed=9)
    queries, _ = blobs(80, 5, seed=10)
    bank16, queries16 = bank.astype(np.float16), queries.astype(np.float16)
    ks = (1, 10, 100)
    reference = knn_predict(bank16.astype(np.float32), yb, queries16.astype(np.float32), ks=ks)
    variants = [
        knn_predict(bank16, yb, queries16, ks=ks),
        knn_predict(torch.from_numpy(bank16), torch.from_numpy(yb), torch.from_numpy(queries16), ks=ks),
        knn_predict(torch.from_numpy(bank16).float(), yb, queries16, ks=ks, device="auto"),
    ]
    for got in variants:
        for k in ks:
            np.testing.assert_array_equal(got[k], reference[k])
    # float16 rounding moves few predictions: the probe is usable on a float16 cache
    full = knn_predict(bank, yb, queries, ks=ks)
    assert np.mean(full[10] == reference[10]) > 0.95


def test_read_only_memmaps_are_read_as_they_are(tmp_path):
    bank, yb = blobs(200, 4, seed=11)
    queries, yq = blobs(50, 4, seed=12)
    np.save(tmp_path / "bank.npy", bank)
    np.save(tmp_path / "queries.npy", queries)
    mb = np.load(tmp_path / "bank.npy", mmap_mode="r")
    mq = np.load(tmp_path / "queries.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        got = knn_accuracy(mb, yb, mq, yq, ks=(1, 20))
    assert got == knn_accuracy(bank, yb, queries, yq, ks=(1, 20))
    assert not mb.flags.writeable


def test_inputs_are_not_modified():
    bank, yb = blobs(100, 3, seed=13)
    queries, _ = blobs(20, 3, seed=14)
    tb, tq = torch.from_numpy(bank.copy()), torch.from_numpy(queries.copy())
    knn_predict(tb, yb, tq, ks=5)
    np.testing.assert_array_equal(tb.numpy(), bank)
    np.testing.assert_array_equal(tq.numpy(), queries)


BANK, YB = blobs(20, 2, dim=4, seed=15)
QUERIES, YQ = blobs(10, 2, dim=4, seed=16)


def _with_row(x, row, value):
    x = x.copy()
    x[row] = value
    return x


@pytest.mark.parametrize("change, error, match", [
    (dict(queries=QUERIES[:, :3]), InvalidDataError, "queries: have 3 features but the bank has 4"),
    (dict(bank_labels=YB[:-1]), InvalidDataError, "bank_labels: has 19 labels but bank has 20 rows"),
    (dict(query_labels=YQ[:-2]), InvalidDataError, "query_labels: has 8 labels but queries has 10 rows"),
    (dict(bank=BANK[:0], bank_labels=YB[:0]), InvalidDataError, "bank: is empty"),
    (dict(queries=QUERIES[:0], query_labels=YQ[:0]), InvalidDataError, "queries: is empty"),
    (dict(bank=BANK[0]), InvalidDataError, r"bank: expected a 2-D array .* got shape \(4,\)"),
    (dict(bank=BANK.astype(np.int64)), InvalidDataError, "bank: expected floating-point features"),
    (dict(bank_labels=YB.astype(np.float32)), InvalidDataError, "bank_labels: expected integer class labels"),
    (dict(bank_labels=np.full(20, -1)), InvalidDataError, "bank_labels: all 20 bank rows are unlabelled"),
    (dict(query_labels=np.full(10, -1)), InvalidDataError, "query_labels: every query is unlabelled"),
    (dict(bank=_with_row(BANK, [3, 11], np.nan)), InvalidDataError,
     r"bank: 2 of 20 rows contain NaN or inf \(rows 3, 11\)"),
    (dict(queries=_with_row(QUERIES, 7, np.inf)), InvalidDataError,
     r"queries: 1 of 10 rows contain NaN or inf \(rows 7\)"),
    (dict(bank=_with_row(BANK, 5, 0.0)), InvalidDataError, r"bank: 1 of 20 rows have zero norm .*\(rows 5\)"),
    (dict(ks=0), ConfigError, "ks: every k must be an integer >= 1, got 0"),
    (dict(ks=(1, 2.5)), ConfigError, "ks: every k must be an integer >= 1, got 2.5"),
    (dict(ks=()), ConfigError, "ks: is empty"),
    (dict(temperature=0), ConfigError, "temperature: must be a finite number > 0"),
    (dict(temperature=-0.07), ConfigError, "temperature: must be a finite number > 0"),
    (dict(temperature=float("nan")), ConfigError, "temperature: must be a finite number > 0"),
    (dict(chunk_size=0), ConfigError, "chunk_size: must be an integer >= 1"),
    (dict(memory_budget=0), ConfigError, "memory_budget: must be an integer >= 1"),
    (dict(device="gpu0"), ConfigError, "device: cannot read 'gpu0' as a torch device"),
])
def test_bad_input_is_a_clear_error(change, error, match):
    with pytest.raises(error, match=match):
        knn_accuracy(**{**dict(bank=BANK, bank_labels=YB, queries=QUERIES, query_labels=YQ), **change})


def test_nan_in_an_unlabelled_bank_row_is_ignored():
    # unlabelled rows are not part of the bank, so they are not read
    bank = _with_row(BANK, 2, np.nan)
    yb = YB.copy()
    yb[2] = -1
    assert set(knn_accuracy(bank, yb, QUERIES, YQ, ks=(1, 5))) == {1, 5}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        knn_accuracy(BANK, YB, QUERIES, YQ, ks=1, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result():
    bank, yb = blobs(2000, 10, dim=64, seed=17)
    queries, _ = blobs(500, 10, dim=64, seed=18)
    cpu = knn_predict(bank, yb, queries, device="cpu")
    gpu = knn_predict(bank, yb, queries, device="cuda", chunk_size=97)
    on_gpu = knn_predict(torch.from_numpy(bank).cuda().half(), yb, queries)  # device None: the bank's
    ref16 = knn_predict(bank.astype(np.float16), yb, queries, device="cpu")
    for k in DEFAULT_KS:
        assert np.mean(gpu[k] == cpu[k]) > 0.995  # matmul rounding may flip a near-tie
        assert np.mean(on_gpu[k] == ref16[k]) > 0.995
