"""GraphBuilder: core math, the Beam executor, NSL equivalence, bad input."""
import collections
import os
import pickle
import tempfile
import types

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf

from graph_testing import (clustered_embeddings, linear_embedding_model,
                           read_graph, write_examples_artifact)
from tfx_nsl import graph_io
from tfx_nsl.components.graph_builder import corpus as corpus_lib
from tfx_nsl.components.graph_builder import connectivity
from tfx_nsl.components.graph_builder import graph_core
from tfx_nsl.components.graph_builder import scoring
from tfx_nsl.components.graph_builder.params import Exact, Lsh, Partition
from tfx_nsl.pipelines.datasets import _example


def _brute_force_top_k(vectors, k, threshold):
  """Plain numpy reference: full similarity matrix, sort each row."""
  normalized = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  scores = normalized @ normalized.T
  np.fill_diagonal(scores, -np.inf)
  edges = {}
  for i, row in enumerate(scores):
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    chosen = [j for j in order if row[j] >= threshold]
    for j in chosen[:k] if k else chosen:
      edges[(i, j)] = row[j]
  return edges


def _as_dict(edges):
  return {(int(s), int(t)): float(w) for s, t, w in zip(*edges[:3])}


@pytest.mark.parametrize('k, threshold', [(3, -1.0), (5, 0.5), (None, 0.6)])
def test_exact_edges_match_numpy_brute_force(k, threshold):
  vectors = clustered_embeddings(300, 16, 10, 0.8, seed=1)
  corpus, usable = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  assert usable.all()
  # A tiny chunk forces many blocks: the result must not depend on blocking.
  found = _as_dict(graph_core.exact_edges(np.arange(300), corpus, k, threshold,
                                          max_entries=7 * 300))
  expected = _brute_force_top_k(vectors.astype(np.float64), k, threshold)
  assert found.keys() == expected.keys()
  for key, weight in expected.items():
    assert found[key] == pytest.approx(weight, abs=1e-5)


def test_normalization_neither_overflows_nor_underflows():
  rng = np.random.RandomState(3)
  base = rng.rand(3, 24).astype(np.float32) + 0.1
  # 1e20 fits float32, its square does not; 1e-30's square underflows.
  rows = np.concatenate([base, base[:1] * 1e20, base[1:2] * 1e-30,
                         np.zeros((1, 24), np.float32)])
  corpus, usable = graph_core.prepare_vectors(rows, graph_core.COSINE)
  assert usable.tolist() == [True] * 5 + [False]
  np.testing.assert_allclose(np.linalg.norm(corpus[:5], axis=1), 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(corpus[3], corpus[0], rtol=1e-6)
  np.testing.assert_allclose(corpus[4], corpus[1], rtol=1e-6)
  # Dot similarity: products of 1e20 vectors overflow float32.
  _, usable = graph_core.prepare_vectors(rows, graph_core.DOT)
  assert usable.tolist() == [True, True, True, False, True, True]


def test_huge_and_tiny_embeddings_get_their_edges(tmp_path, caplog):
  rng = np.random.RandomState(4)
  vectors = rng.rand(20, 24).astype(np.float32)
  rows = _rows(vectors) + [
      {'id': 'huge', 'emb': vectors[0] * np.float32(1e20)},
      {'id': 'tiny', 'emb': vectors[1] * np.float32(1e-30)}]
  _, found, stats = _run_executor(
      tmp_path, {'train': rows}, embedding_features=['emb'],
      similarity_threshold=0.999, max_neighbors=1, undirected=False)
  assert found[('huge', 'n0000')] == pytest.approx(1.0, abs=1e-5)
  assert found[('tiny', 'n0001')] == pytest.approx(1.0, abs=1e-5)
  assert stats['counters'].get('zero_embedding', 0) == 0
  # With dot similarity the huge one is left out, counted and named.
  _, found, stats = _run_executor(
      tmp_path, {'train': rows}, name='dot', embedding_features=['emb'],
      similarity='dot', similarity_threshold=0.0, max_neighbors=1)
  assert stats['counters']['embedding_too_large'] == 1
  assert not any('huge' in pair for pair in found)
  assert 'huge' in caplog.text and 'overflow float32' in caplog.text


@pytest.mark.parametrize('threshold', [-1.0, 0.6])
def test_pair_edges_scores_each_pair_once_and_matches_brute_force(threshold):
  vectors = clustered_embeddings(300, 16, 10, 0.8, seed=2)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  # Uneven ranges and tiny chunks: diagonal blocks of every shape.
  parts = [graph_core.pair_edges(a, b, corpus, threshold,
                                 max_entries=5 * 300)
           for a, b in ((0, 7), (7, 150), (150, 299), (299, 300))]
  edges = graph_core.concat_edges(parts)
  found = _as_dict(edges)
  assert len(found) == len(edges.src)  # No pair twice.
  assert all(found[(t, s)] == w for (s, t), w in found.items())  # Symmetric.
  expected = _brute_force_top_k(vectors.astype(np.float64), None, threshold)
  assert found.keys() == expected.keys()
  for key, weight in expected.items():
    assert found[key] == pytest.approx(weight, abs=1e-5)


def _reference_select(scores, row_ids, col_ids, k, threshold):
  edges = set()
  for r, row in enumerate(row_ids):
    ranked = sorted((-scores[r, j], col_ids[j]) for j in range(scores.shape[1])
                    if col_ids[j] != row and scores[r, j] >= threshold)
    edges.update((int(row), int(c)) for _, c in (ranked[:k] if k else ranked))
  return edges


@pytest.mark.parametrize('seed', range(12))
def test_select_neighbors_is_exact_with_long_rows_and_ties(seed):
  """Long rows take the sampled-bound path; coarse values make many ties
  (the k-th score shared by many columns), which must break by index."""
  rng = np.random.RandomState(seed)
  cols = rng.randint(5000, 20000)
  rows = np.sort(rng.choice(cols, rng.randint(1, 5), replace=False))
  levels = (3, 1000)[seed % 2]
  scores = (rng.randint(0, levels, (len(rows), cols)) / 10).astype(np.float32)
  k, threshold = (None, 1, 3, 10)[seed % 4], (-1.0, 0.1, 50.0)[seed % 3]
  found = graph_core.select_neighbors(scores.copy(), rows, np.arange(cols), k,
                                      threshold)
  assert set(zip(found.src.tolist(), found.tgt.tolist())) == _reference_select(
      scores, rows, np.arange(cols), k, threshold)


@pytest.mark.parametrize('cols,k', [(5000, 2), (5000, 3), (4099, 10),
                                    (20000, 500), (9000, 5000)])
def test_select_neighbors_top_k_of_continuous_scores(cols, k):
  """Few ties: exactly each row's k largest scores, so a bound a little
  too high (e.g. the (k-1)-th group maximum) fails here, where heavy ties
  hide it; one row is the last column, whose self-masked score falls in
  the groups' tail."""
  rng = np.random.RandomState(k)
  scores = rng.standard_normal((3, cols)).astype(np.float32)
  rows = np.array([0, cols // 2, cols - 1])
  found = graph_core.select_neighbors(scores.copy(), rows, np.arange(cols), k,
                                      -10.0)
  masked = scores.copy()
  masked[np.arange(3), rows] = -np.inf
  expected = np.argsort(-masked, axis=1, kind='stable')[:, :k]  # ties: index
  assert np.array_equal(found.src, np.repeat(rows, k))
  assert np.array_equal(found.tgt.reshape(3, k), expected)


@pytest.mark.parametrize('cols,groups,share', [
    (4096, 2048, 0.001), (5000, 2048, 0.001), (5000, 2048, 0.3),
    (700, 700, 0.01), (3, 2, 0.5)])
def test_passing_reads_only_groups_that_reach_the_bound(cols, groups, share):
  """The same (rows, cols) as np.nonzero, in its order, whether few groups
  reach the bound (read again) or many (one full pass); the tail columns
  past a multiple of `groups` belong to the first groups; None past the
  limit."""
  rng = np.random.RandomState(cols)
  scores = rng.standard_normal((50, cols)).astype(np.float32)
  bound = np.quantile(scores, 1 - share, axis=1).astype(np.float32)
  maxima = graph_core._group_maxima(scores, groups)
  assert np.array_equal(maxima, [[row[g::groups].max() for g in range(groups)]
                                 for row in scores])
  expected = np.nonzero(scores >= bound[:, None])
  found = graph_core._passing(scores, bound, maxima, limit=scores.size)
  assert all(np.array_equal(f, e) for f, e in zip(found, expected))
  assert graph_core._passing(scores, bound, maxima,
                             limit=len(expected[0]) - 1) is None


@pytest.mark.parametrize('probes', [3, 25])
def test_nearest_partitions_by_score_then_index(probes):
  """The centroids by decreasing score, ties to the lower index, in
  chunks."""
  rng = np.random.RandomState(probes)
  corpus = rng.standard_normal((500, 6)).astype(np.float32)
  centroids = rng.standard_normal((40, 6)).astype(np.float32)
  centroids[7] = centroids[3]  # a tie: 3 before 7
  scores = corpus @ centroids.T
  expected = np.lexsort((np.broadcast_to(np.arange(40), scores.shape),
                         -scores))[:, :probes]
  found = graph_core.nearest_partitions(corpus, centroids, probes,
                                        max_entries=40 * 64)
  np.testing.assert_array_equal(found, expected)


def test_partition_mode_finds_most_exact_neighbors_and_only_true_edges():
  vectors = clustered_embeddings(4000, 16, 80, 0.3, seed=12)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  exact = graph_core.exact_edges(np.arange(4000), corpus, 5, 0.0)
  centroids = graph_core.partition_centroids(corpus, 4000 // 200, seed=0)
  probes = graph_core.nearest_partitions(corpus, centroids, 4)
  assert (np.sort(probes, axis=1)[:, 1:] != np.sort(probes, axis=1)[:, :-1]
          ).all()  # distinct probes
  group_of = graph_core.partition_groups(centroids)
  assert group_of.max() < len(centroids) // graph_core.PARTITIONS_PER_GROUP
  # As the executor stores them: members of a partition by primary probe,
  # ascending; the queries of a block, by group.
  members = {p: (np.flatnonzero(probes[:, 0] == p),) for p in range(20)}
  members = {p: (m[0], corpus[m[0]], None) for p, m in members.items()}
  blocks = [np.flatnonzero(group_of[probes[:, 0]] == g)
            for g in np.unique(group_of)]
  assert np.array_equal(np.sort(np.concatenate(blocks)), np.arange(4000))
  parts = [graph_core.block_edges(b, corpus[b], probes[b], members.get, 5,
                                  0.0) for b in blocks]
  found = graph_core.concat_edges([p[0] for p in parts])
  assert np.bincount(found.src, minlength=4000).max() <= 5
  assert graph_core.recall_at_k(found, exact, np.arange(4000)) >= 0.95
  np.testing.assert_allclose(found.weight, (corpus @ corpus.T)[found.src,
                                                                found.tgt],
                             atol=1e-5)
  assert sum(p[1] for p in parts) < 4000 * 4000 / 2  # far from all pairs
  threaded = [graph_core.block_edges(b, corpus[b], probes[b], members.get, 5,
                                     0.0, threads=3) for b in blocks]
  for (one, pairs), (three, threaded_pairs) in zip(parts, threaded):
    assert pairs == threaded_pairs
    for a, b in zip(one, three):
      np.testing.assert_array_equal(a, b)  # Same edges, same order.


@pytest.mark.parametrize('k, threshold', [(5, 0.2), (None, 0.6)])
def test_block_edges_equal_a_brute_force_over_the_probed_members(k, threshold):
  """faiss's scan of the probed partitions (a -1 probe: none) gives each
  query the top-k (or every neighbor >= threshold) of a numpy brute force
  over exactly those members, itself left out; pairs counts the scans."""
  vectors = clustered_embeddings(3000, 16, 60, 0.5, seed=16)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  centroids = graph_core.partition_centroids(corpus, 30, seed=0)
  probes = graph_core.nearest_partitions(corpus, centroids, 3)
  names = corpus_lib.encode_ids([f'n{i}' for i in range(3000)])
  members = {p: (m, corpus[m], names[m]) for p in range(30)
             for m in [np.flatnonzero(probes[:, 0] == p)]}
  queries = np.sort(np.random.RandomState(0).choice(3000, 500, replace=False))
  some = probes[queries].copy()
  some[::4, 1:] = -1  # some queries probe one partition only
  # Fewer partitions than probes a query (a group's home pass): faiss
  # scans at most as many probes as it has lists.
  pair = np.flatnonzero(np.isin(probes[:, 0], [0, 1]))
  few = np.full((len(pair), 6), -1, np.int32)
  few[:, 3], few[::2, 5] = probes[pair, 0], 1 - probes[pair[::2], 0]
  for queries, query_probes in ((queries, some), (pair, few)):
    edges, pairs = graph_core.block_edges(queries, corpus[queries],
                                          query_probes, members.get, k,
                                          threshold)
    expected, expected_pairs = [], 0
    for query, row in zip(queries, query_probes):
      cols = np.concatenate([members[p][0] for p in row if p >= 0])
      expected_pairs += len(cols)
      cols = cols[cols != query]
      scores = corpus[cols] @ corpus[query]
      order = np.lexsort((cols, -scores))
      order = order[scores[order] >= threshold][:k]
      expected += [(query, c, w) for c, w in zip(cols[order], scores[order])]
    assert pairs == expected_pairs
    assert len(edges.src) == len(expected) > 100
    found = sorted(zip(edges.src.tolist(), edges.tgt.tolist()))
    assert found == sorted((int(s), int(t)) for s, t, _ in expected)
    weights = dict(zip(zip(edges.src.tolist(), edges.tgt.tolist()),
                       edges.weight.tolist()))
    np.testing.assert_allclose([weights[s, t] for s, t, _ in expected],
                               [w for _, _, w in expected], atol=1e-6)
    np.testing.assert_array_equal(edges.tgt_id, names[edges.tgt])
    # By source, then weight descending: what kth_weights reads.
    assert (np.diff(edges.src) >= 0).all()


def _kernel_pairs(kernel, corpus, threshold, unit=True):
  """{(src, tgt): weight} of one scoring kernel over all of `corpus`."""
  n = len(corpus)
  ids = np.arange(n)
  names = corpus_lib.encode_ids([f'n{i}' for i in range(n)])
  half = n // 2
  if kernel == 'cross':
    edges = graph_core.exact_edges(ids, corpus, None, threshold, unit=unit)
  elif kernel == 'pair':
    edges = graph_core.pair_edges(0, n, corpus, threshold, unit=unit)
  elif kernel == 'cross_pair':  # two halves against each other, and within
    edges = graph_core.concat_edges([
        graph_core.cross_pair_edges(ids[:half], corpus[:half], names[:half],
                                    ids[half:], corpus[half:], names[half:],
                                    threshold, unit=unit),
        graph_core.pair_edges(0, half, corpus[:half], threshold, unit=unit),
        graph_core.pair_edges(0, n - half, corpus[half:], threshold,
                              offset=half, unit=unit)])
  elif kernel == 'bucket':
    edges = graph_core.bucket_edges(ids, corpus, None, threshold, names,
                                    unit)
  else:  # partition: one partition holding every node
    edges, _ = graph_core.block_edges(
        ids, corpus, np.zeros((n, 1), np.int32),
        {0: (ids, corpus, names)}.get, None, threshold, unit=unit)
  return dict(zip(zip(edges.src.tolist(), edges.tgt.tolist()),
                  edges.weight.tolist()))


@pytest.mark.parametrize('kernel',
                         ['cross', 'pair', 'cross_pair', 'bucket', 'block'])
@pytest.mark.parametrize('similarity', [graph_core.COSINE, graph_core.DOT])
def test_edges_at_the_threshold_are_decided_in_float64(kernel, similarity):
  """A threshold between a pair's float32 score and its float64 similarity
  (of the float32 inputs) keeps the pair by the float64 one, in every
  kernel: the float32 score alone would decide it the other way."""
  raw = clustered_embeddings(400, 24, 8, 0.3, seed=4).astype(np.float32)
  corpus, _ = graph_core.prepare_vectors(raw, similarity)
  unit = similarity == graph_core.COSINE
  exact = raw.astype(np.float64) @ raw.astype(np.float64).T
  if unit:
    norms = np.linalg.norm(raw.astype(np.float64), axis=1)
    exact /= norms[:, None] * norms[None, :]
  float32 = _kernel_pairs(kernel, corpus, -1.0 if unit else -1e30, unit)
  pairs = np.array(list(float32))
  gaps = np.array(list(float32.values())) - exact[pairs[:, 0], pairs[:, 1]]
  worst = np.argmax(np.abs(gaps))
  assert np.abs(gaps[worst]) > 1e-8  # float32 rounding shows
  src, tgt = pairs[worst]
  threshold = float(exact[src, tgt] + gaps[worst] / 2)
  found = _kernel_pairs(kernel, corpus, threshold, unit)
  expected = {(s, t) for s, t in pairs.tolist() if exact[s, t] >= threshold}
  assert set(found) == expected
  assert ((src, tgt) in found) == (exact[src, tgt] >= threshold)


def test_equal_and_opposite_rows_reach_thresholds_one_and_minus_one():
  """In float64, equal unit rows score exactly 1 and opposite ones -1, so
  duplicates meet threshold 1.0 (a product of two norms missed by an ulp)."""
  rng = np.random.RandomState(2)
  for _ in range(50):
    x = rng.standard_normal((1, 16)).astype(np.float32)
    corpus, _ = graph_core.prepare_vectors(np.r_[x, x, -x],
                                           graph_core.COSINE)
    assert len(graph_core.pair_edges(0, 3, corpus, 1.0).src) == 2
    opposite = graph_core.exact_edges(np.arange(3), corpus, None, -1.0)
    assert len(opposite.src) == 6


def _near_pair(cosines):
  """2-d unit rows at these cosines to [1, 0]."""
  cosines = np.asarray(cosines, np.float64)
  return np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1).astype(
      np.float32)


def test_top_k_refills_a_row_whose_candidate_fails_in_float64():
  """k = 1: the best float32 candidate A is within the slack and fails in
  float64, the next one B is within it and reaches the threshold: the row
  gets B (the sampled bound had left B out before A was dropped)."""
  cols, a, b = 5000, 10, 20
  scores = np.random.RandomState(0).uniform(0, 0.5, (1, cols)).astype(
      np.float32)
  scores[0, a], scores[0, b] = 0.900004, 0.899996
  columns = _near_pair(np.full(cols, 0.1))
  columns[[a, b]] = _near_pair([0.85, 0.95])  # their float64 cosines
  found = graph_core.select_neighbors(
      scores, np.array([cols]), np.arange(cols), 1, 0.9,
      vectors=(_near_pair([1.0]), columns))
  assert found.tgt.tolist() == [b]


def test_block_top_k_refills_a_query_whose_result_fails_in_float64(
    monkeypatch):
  """The same in partition mode: faiss's k + 1 results (the query itself
  and A) leave B out; A fails in float64, so the query searches again."""
  vectors = _near_pair([1.0, 0.900002, 0.900001, 0.1, 0.1])  # q, A, B, ...
  ids = np.arange(5)
  real = graph_core._float64_scores
  monkeypatch.setattr(
      graph_core, '_float64_scores', lambda left, right, unit: np.where(
          right[:, 0] == vectors[1, 0], 0.0, real(left, right, unit)))
  edges, _ = graph_core.block_edges(
      ids[:1], vectors[:1], np.zeros((1, 1), np.int32),
      {0: (ids, vectors, None)}.get, 1, 0.9)
  assert edges.tgt.tolist() == [2]


def test_distributed_kmeans_is_the_one_process_kmeans(tmp_path):
  """The sample stored in parts: the starting centroids do not depend on
  how it is split, and the Lloyd steps summed over the parts (any order,
  any bundling) give exactly the centroids of the same steps over the
  whole sample."""
  vectors = clustered_embeddings(2000, 8, 20, 0.4, seed=9)
  ids = np.arange(2000)
  start = corpus_lib.id_hash(corpus_lib.encode_ids(
      [f'n{i}' for i in ids]), 1)
  # Nested samples for 10 centroids of 4000 nodes (these are 2000 of them):
  # a node's phase is the first whose sampling rate takes it.
  schedule = graph_core.KMEANS_SCHEDULE
  phases = graph_core.kmeans_phases(corpus_lib.id_hash(corpus_lib.encode_ids(
      [f'n{i}' for i in ids]), 0), 10, 4000)
  rates = [points * 10 / 4000 for points, _ in schedule] + [1]
  np.testing.assert_allclose(
      np.bincount(phases, minlength=len(rates)) / 2000,
      np.diff(np.r_[0, rates]), atol=0.04)
  def files(bounds):
    return [scoring.SampleFile(corpus_lib.store_arrays(
        str(tmp_path), 'sample', ids=ids[a:b], vectors=vectors[a:b],
        phases=phases[a:b], start=start[a:b]), 30)
            for a, b in zip(bounds[:-1], bounds[1:])]
  parts = files([0, 700, 1500, 2000])
  first = scoring.initial_centroids(parts)
  np.testing.assert_array_equal(
      first, scoring.initial_centroids(files([0, 100, 1200, 1900, 2000])))
  chosen = np.lexsort((ids, start))[:30]
  np.testing.assert_array_equal(
      first, graph_core.unit_rows(vectors[chosen]).astype(np.float32))
  distributed = whole = first
  last = len(schedule) - 1
  for step, phase in enumerate([0, 1, min(2, last), last, last]):
    sums_files = []
    for bundle in ([parts[2], parts[0]], [parts[1]]) if step % 2 else (
        [parts[:1], parts[1:]]):
      fn = scoring.LloydSums(str(tmp_path), phase)
      fn.start_bundle()
      for part in bundle:
        assert not list(fn.process(part, distributed) or [])
      sums_files += [v.value for v in fn.finish_bundle()]
    assert len(sums_files) == 2
    distributed = scoring.lloyd_update(sums_files[::-1], distributed)
    whole = graph_core.lloyd_update(whole, graph_core.lloyd_sums(
        vectors[phases <= phase], whole))
    np.testing.assert_array_equal(distributed, whole)
  assert not np.allclose(distributed, first, atol=1e-3)  # the steps moved
  # The one-process k-means is the same steps.
  np.testing.assert_allclose(
      np.linalg.norm(graph_core.partition_centroids(vectors, 30, 0), axis=1),
      1, rtol=1e-5)
  model = scoring.partition_model(distributed, types.SimpleNamespace(
      mode=Partition(seed=0)))
  assert model.group_of.shape == (30,)
  assert scoring.partition_model(None, None) is None
  assert scoring.initial_centroids([]) is None
  assert scoring.lloyd_update([], None) is None


def test_calibration_sample_is_apart_from_the_recall_sample():
  for nodes, size in ((100_000, 1000), (1500, 1000), (800, 1000)):
    layout = types.SimpleNamespace(num_nodes=nodes)
    params = types.SimpleNamespace(mode=Partition(recall_sample_size=size))
    recall = scoring.recall_sample(layout, params)
    calibration = scoring.calibration_sample(layout, params)
    assert (np.diff(calibration) > 0).all()
    if nodes > size:
      assert len(calibration) == min(size, nodes - size)
      assert not np.isin(calibration, recall).any()
    else:  # every node is in the recall sample: it is the calibration too
      np.testing.assert_array_equal(calibration, recall)
    np.testing.assert_array_equal(
        scoring.query_nodes(layout, params),
        np.union1d(recall, calibration))


def test_query_parts_come_together_sorted_by_node():
  vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
  ids, joined = scoring.concat_by_node([(np.array([9, 5]), vectors[:2]),
                                        (np.array([7, 1]), vectors[2:])])
  np.testing.assert_array_equal(ids, [1, 5, 7, 9])
  np.testing.assert_array_equal(joined, vectors[[3, 1, 2, 0]])
  assert scoring.concat_by_node([])[1] is None


def test_recall_by_probes_is_the_recall_that_block_edges_gets():
  """The calibration curve is exact: for every probe count, the recall@k
  of block_edges' edges against a brute force; fewest_probes picks the
  first count that reaches the target."""
  vectors = clustered_embeddings(3000, 16, 60, 0.9, seed=17)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  centroids = graph_core.partition_centroids(corpus, 40, seed=0)
  probes = graph_core.nearest_partitions(corpus, centroids, 12)
  members = {p: (m, corpus[m], None) for p in range(40)
             for m in [np.flatnonzero(probes[:, 0] == p)]}
  queries = np.sort(np.random.RandomState(1).choice(3000, 300, replace=False))
  exact = graph_core.exact_edges(queries, corpus, 10, 0.1)
  curve, error = graph_core.recall_by_probes(exact, queries, probes[queries],
                                             probes[exact.tgt, 0])
  assert len(curve) == 12 and (np.diff(curve) >= 0).all()
  for p in range(1, 13):
    edges, _ = graph_core.block_edges(queries, corpus[queries],
                                      probes[queries, :p], members.get, 10, 0.1)
    assert curve[p - 1] == graph_core.recall_at_k(edges, exact, queries)
  assert curve[0] < 0.9 < curve[-1]  # the data make the choice matter
  # The error: as a bootstrap over the queries gives it.
  rng = np.random.RandomState(2)
  boot = []
  for _ in range(300):
    drawn = rng.choice(len(queries), len(queries))
    mask = np.isin(exact.src, queries[drawn])
    counts = np.bincount(np.searchsorted(queries, exact.src[mask]),
                         minlength=len(queries))[drawn]
    hit = probes[exact.tgt[mask], 0][:, None] == probes[exact.src[mask], :4]
    per_query = np.bincount(np.searchsorted(queries, exact.src[mask]),
                            weights=hit.any(axis=1), minlength=len(queries))
    boot.append(per_query[drawn].sum() / counts.sum())
  assert abs(np.std(boot) / error[3] - 1) < 0.25
  # The fewest probes whose lower bound (recall - 1.645 error) reaches it.
  bound = curve - 1.645 * error
  target = (bound[2] + bound[3]) / 2
  assert graph_core.fewest_probes(curve, error, target) == 4
  assert graph_core.fewest_probes(curve, error, bound[3]) == 4
  assert graph_core.fewest_probes(curve, 0 * error, curve[3]) == 4
  assert graph_core.fewest_probes(curve, error, 1.01) == 12  # unreachable
  no_edges = graph_core.take(exact, np.zeros(len(exact.src), bool))
  recall, error = graph_core.recall_by_probes(
      no_edges, queries, probes[queries], probes[:0, 0])
  assert (recall == 1).all() and (error == 0).all()


@pytest.mark.parametrize('k, threshold', [(5, 0.0), (None, 0.6)])
def test_partition_passes_find_the_one_pass_edges(k, threshold):
  """The executor's two passes (each group's nodes at home, then visiting
  the other groups they probe, pruned at their home k-th weight, merged at
  home) find exactly the edges of all probes scored at once."""
  vectors = clustered_embeddings(4000, 16, 80, 0.3, seed=12)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  centroids = graph_core.partition_centroids(corpus, 40, seed=0)
  probes = graph_core.nearest_partitions(corpus, centroids, 6)
  group_of = graph_core.partition_groups(centroids)
  names = corpus_lib.encode_ids([f'n{i}' for i in range(4000)])
  members = {p: (m, corpus[m], names[m]) for p in range(40)
             for m in [np.flatnonzero(probes[:, 0] == p)]}
  params = types.SimpleNamespace(max_neighbors=k,
                                 similarity_threshold=threshold,
                                 unit_vectors=True)
  everything = np.arange(4000)
  one_pass, _ = scoring.score_members(everything, corpus, probes, members,
                                      params)
  parts, unpruned, pruned = [], 0, 0
  home_of = group_of[probes[:, 0]]
  for home in np.unique(home_of):
    own = np.flatnonzero(home_of == home)[::-1]  # in no particular order
    edges, _ = scoring.score_members(
        own, corpus[own], scoring.in_group(probes[own], group_of, home),
        members, params)
    parts.append(edges)
    bounds = scoring.kth_weights(edges, own, k)
    assert (np.isfinite(bounds) == (k is not None)).all()
    for other in set(np.unique(group_of[probes[own]])) - {home}:
      visit = (group_of[probes[own]] == other).any(axis=1)
      found, _ = scoring.score_members(
          own[visit], corpus[own[visit]],
          scoring.in_group(probes[own[visit]], group_of, other), members,
          params)
      kept, _ = scoring.at_least(found, own[visit], bounds[visit])
      unpruned += len(found.src)
      pruned += len(kept.src)
      parts.append(kept)
  merged = graph_core.top_k_per_source(graph_core.concat_edges(parts), k)
  one_pass = graph_core.top_k_per_source(one_pass, k)
  # Other product shapes: BLAS may sum in another order (the last bit of a
  # weight, and so the order of near ties).
  merged, one_pass = (graph_core.take(e, np.lexsort((e.tgt, e.src)))
                      for e in (merged, one_pass))
  for name in ('src', 'tgt', 'tgt_id'):
    np.testing.assert_array_equal(getattr(merged, name),
                                  getattr(one_pass, name))
  np.testing.assert_allclose(merged.weight, one_pass.weight, atol=1e-6)
  assert len(merged.src) > 4000
  if k is not None:
    assert pruned < unpruned / 2  # the bound prunes most visiting edges
  else:
    assert pruned == unpruned


def _partition_passes(tmp_path, budget_bytes):
  """The partition steps run by hand over stored groups: ScoreHome on each
  group, then ScoreVisits over every visited group in one bundle. Returns
  ScoreVisits' (home group, Run) outputs."""
  tmp_path.mkdir()
  vectors = clustered_embeddings(2000, 16, 40, 2.0, seed=15)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  centroids = graph_core.partition_centroids(corpus, 80, seed=0)
  model = scoring.PartitionModel(centroids,
                                 graph_core.partition_groups(centroids))
  probes = graph_core.nearest_partitions(corpus, centroids, 4)
  params = types.SimpleNamespace(max_neighbors=5, similarity_threshold=0.0,
                                 memory_budget_bytes=budget_bytes,
                                 unit_vectors=True)
  assigned = corpus_lib.store_runs(
      str(tmp_path), 'assigned', model.group_of[probes[:, 0]],
      ids=np.arange(2000), vectors=corpus, probes=probes,
      names=corpus_lib.encode_ids([f'n{i}' for i in range(2000)]))
  groups = dict(scoring.store_group((g, [run]), str(tmp_path))
                for g, run in assigned)
  visits = collections.defaultdict(list)
  home = scoring.ScoreHome(params, str(tmp_path), threads=1)
  for group, path in groups.items():
    for out in home.process(scoring.GroupFile(group, path), None, model):
      if isinstance(out, beam.pvalue.TaggedOutput):
        visits[out.value[0]].append(out.value[1])
  assert len(visits) > 2
  visiting = scoring.ScoreVisits(params, str(tmp_path), threads=1)
  visiting.start_bundle()
  found = [out for group, runs in sorted(visits.items())
           for out in visiting.process((group, runs), None, model, groups)]
  found += [out.value for out in visiting.finish_bundle()]
  return found


def test_score_visits_stores_a_bundles_edges_in_one_file(tmp_path):
  """ScoreVisits stores the edges a bundle finds in one file (MergeFound
  opens each file that has edges of its group), in more only once they
  pass its share of the memory budget; the edges are the same."""
  by_budget = {}
  for budget in (2**30, 1):
    found = _partition_passes(tmp_path / str(budget), budget)
    by_budget[budget] = ({run.path for _, run in found}, {
        group: np.sort(corpus_lib.load_runs(
            [r for g, r in found if g == group])['tgt_id'])
        for group in {g for g, _ in found}})
  (one_file, edges), (many_files, same_edges) = by_budget.values()
  assert len(one_file) == 1
  assert len(many_files) > 2
  assert sum(len(t) for t in edges.values()) > 100
  assert edges.keys() == same_edges.keys()
  for group, targets in edges.items():
    np.testing.assert_array_equal(targets, same_edges[group])


def test_lsh_finds_most_exact_neighbors_and_only_true_edges():
  vectors = clustered_embeddings(2000, 16, 40, 0.3, seed=2)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  exact = graph_core.exact_edges(np.arange(2000), corpus, 5, 0.0)
  found = graph_core.concat_edges([
      graph_core.bucket_edges(b, corpus[b], 5, 0.0)
      for r in range(6) for b in graph_core.lsh_buckets(corpus, 6, r, 512)])
  found = graph_core.top_k_per_source(graph_core.dedupe_max(found), 5)
  recall = graph_core.recall_at_k(found, exact, np.arange(2000))
  assert recall >= 0.9
  exact_scores = corpus @ corpus.T
  np.testing.assert_allclose(found.weight, exact_scores[found.src, found.tgt],
                             atol=1e-5)


def test_lsh_buckets_are_bounded_and_cover_every_node():
  corpus, _ = graph_core.prepare_vectors(
      clustered_embeddings(1000, 8, 3, 0.1, seed=3), graph_core.COSINE)
  buckets = graph_core.lsh_buckets(corpus, 2, 0, 100)
  assert max(len(b) for b in buckets) <= 100
  covered = np.concatenate(buckets)
  assert len(covered) == len(set(covered.tolist()))
  assert len(covered) >= 990  # only singleton pieces are dropped


def test_graph_stats():
  edges = graph_core.Edges(np.array([0, 1, 1, 3]), np.array([1, 0, 2, 4]),
                           np.ones(4, np.float32))
  stats = graph_core.graph_stats(6, edges)
  assert stats['num_edges'] == 4 and stats['num_nodes'] == 6
  assert stats['isolated_nodes'] == 1  # node 5
  assert stats['connected_components'] == 3  # {0,1,2} {3,4} {5}
  assert stats['largest_component'] == 3
  assert stats['out_degree_histogram'] == {'0': 3, '1': 2, '2': 1}


@pytest.mark.parametrize('ids', [
    [[b'a'], [b'b\xc3\xa9']], [[b'a'], [b'']], [[b'a'], [b'x\ty']],
    [[b'a'], [b'x\ry']], [[b'a'], [b'x\ny']], [[b'a'], [b'\xff']],
    [[b'a'], [b'x\x00']], [[b'a'], []], [[b'a'], [b'b', b'c']],
    [[b'a'], None], [[5], [7]]])
@pytest.mark.parametrize('large', [False, True])
def test_ids_from_arrow_equal_node_id(ids, large):
  """The arrow path for plain text ids gives graph_io.node_id's ids, and
  leaves every other case (derived, unusable, int64) to the row loop."""
  import pyarrow as pa
  from tfx_nsl.components.graph_builder import executor
  binary = pa.large_list(pa.large_binary()) if large else pa.list_(
      pa.binary())
  column = pa.array(ids, pa.list_(pa.int64()) if ids[0] == [5] else binary)
  raw = [b'raw1', b'raw2']
  batch = pa.RecordBatch.from_arrays(
      [column, pa.array([[r] for r in raw], pa.list_(pa.binary()))],
      ['id', '__raw_record__'])
  found, _ = executor._ids_from(batch, 'id')
  assert list(found) == [graph_io.node_id(v or [], r) for v, r in zip(ids,
                                                                     raw)]
  plain = executor._plain_text_ids(column)
  assert (plain is not None) == (ids == [[b'a'], [b'b\xc3\xa9']])


def test_ids_from_a_null_typed_column_are_derived():
  """A batch where the id feature has no value kind decodes as pa.null():
  every id is derived from the record, as from an empty list."""
  import pyarrow as pa
  from tfx_nsl.components.graph_builder import executor
  raw = [b'raw1', b'raw2']
  batch = pa.RecordBatch.from_arrays(
      [pa.nulls(2), pa.array([[r] for r in raw], pa.list_(pa.binary()))],
      ['id', '__raw_record__'])
  found, derived = executor._ids_from(batch, 'id')
  assert list(found) == [graph_io.node_id([], r) for r in raw]
  assert derived == 2


@pytest.mark.parametrize('weights', [
    # Ties at the 6th decimal (1/128 = 0.0078125), signed zeros and what
    # rounds to them, rounding up to the next unit, the largest fast-path
    # weights and the float32 neighbours of 1.
    [1 / 128, 3 / 128, -1 / 128, 0.0, -0.0, -1e-9, 4e-7, 0.9999996,
     -0.9999996, 1.0, np.nextafter(np.float32(1), np.float32(2)),
     np.nextafter(np.float32(1), np.float32(0)), 9.0e9, -9.0e9, 1e-30],
    # The Python format: past the fast path, or not finite.
    [0.5, 1e10, -3.4e38], [0.5, np.nan], [np.inf, -np.inf]])
def test_edge_lines_are_python_percent_f(weights):
  """graph_io.edge_lines writes what EDGE_LINE's '%f' writes, byte for byte:
  ids of any UTF-8 length, weights rounded half to even."""
  rng = np.random.default_rng(0)
  weights = np.r_[np.asarray(weights, np.float32),
                  rng.normal(0, 1, 2000).astype(np.float32),
                  rng.uniform(-1, 1, 2000).astype(np.float32)]
  names = np.array([b'a', b'node-\xc3\xa9', b'x' * 40, b'7'], 'S')
  sources = names[rng.integers(0, len(names), len(weights))]
  targets = names[rng.integers(0, len(names), len(weights))]
  assert graph_io.edge_lines(sources, targets, weights) == b''.join(
      graph_io.EDGE_LINE % row for row in zip(
          sources.tolist(), targets.tolist(), weights.tolist()))
  assert graph_io.edge_lines(sources[:0], targets[:0], weights[:0]) == b''
  # float64 weights are not scaled exactly: Python formats them.
  assert graph_io.edge_lines(sources[:3], targets[:3], weights[:3].astype(
      np.float64)) == b''.join(graph_io.EDGE_LINE % row for row in zip(
          sources[:3].tolist(), targets[:3].tolist(), weights[:3].tolist()))


@pytest.mark.parametrize('offset', [0, 1 << 32])  # past uint32: lexsort
def test_packed_sorts_equal_lexsort(offset):
  """source_weight_order and dedupe_max against np.lexsort: ties (equal
  weights of one source, duplicate pairs), -0.0 beside 0.0, infinities."""
  rng = np.random.RandomState(7)
  levels = np.float32([0.5, -0.5, 0.0, -0.0, 1.0, 0.9, np.inf, -np.inf])
  for trial in range(200):
    n = rng.randint(0, 300)
    src = rng.randint(0, rng.randint(1, 30), n).astype(np.int64) + offset
    tgt = rng.randint(0, rng.randint(1, 30), n).astype(np.int64)
    weight = (rng.choice(levels, n) if trial % 2 else
              rng.randn(n).astype(np.float32))
    expected = np.lexsort((tgt, -weight, src))
    order = graph_core.source_weight_order(src, weight, tgt)
    for column in (src, weight, tgt):
      np.testing.assert_array_equal(column[order], column[expected])
    edges = graph_core.Edges(src, tgt, weight, tgt.astype('S'))
    first = graph_core.take(edges, np.lexsort((-weight, tgt, src)))
    first = graph_core.take(first, np.r_[True, (
        first.src[1:] != first.src[:-1]) | (first.tgt[1:] != first.tgt[:-1])]
                            [:len(first.src)])
    for got, want in zip(graph_core.dedupe_max(edges), first):
      np.testing.assert_array_equal(got, want)


def test_dense_unique_and_counts_equal_numpy():
  rng = np.random.RandomState(3)
  for _ in range(300):
    span = rng.choice([1, 10, 1000, 10**12])
    values = (rng.randint(0, min(span, 2**62), rng.randint(0, 60)) +
              rng.choice([0, 5, 2**40])).astype(np.int64)
    unique, inverse = graph_core.unique_inverse(values)
    expected, expected_inverse = np.unique(values, return_inverse=True)
    np.testing.assert_array_equal(unique, expected)
    np.testing.assert_array_equal(inverse, expected_inverse)
    assert unique.dtype == np.int64
    np.testing.assert_array_equal(graph_core.value_counts(values),
                                  np.unique(values, return_counts=True)[1])


# --- The Beam executor -------------------------------------------------------


def _rows(vectors, prefix='n', start=0):
  return [{'id': f'{prefix}{i + start:04d}', 'emb': v,
           'label': np.int64(i % 3)} for i, v in enumerate(vectors)]


def _run_executor(tmp_path, splits, name='graph', beam_args=None, model=None,
                  **params):
  from tfx_nsl.components.graph_builder import executor
  from tfx_nsl.components.graph_builder.params import GraphBuilderParams
  from tfx_nsl.types import Graph
  examples = write_examples_artifact(tmp_path / f'{name}-examples', splits)
  graph = Graph()
  graph.uri = str(tmp_path / name)
  values = GraphBuilderParams(**params).to_exec_properties()
  inputs = {'examples': [examples]}
  if model is not None:
    inputs['model'] = [model]
  context = executor.Executor.Context(
      beam_pipeline_args=beam_args or ['--direct_running_mode=in_memory'],
      tmp_dir=str(tmp_path / 'tmp'))
  executor.Executor(context).Do(inputs, {'graph': [graph]}, values)
  # Only the graph: the stored corpus the workers read is gone.
  assert not any(name.startswith('.') for name in os.listdir(graph.uri))
  return graph, read_graph(graph.uri), graph_io.read_stats(graph.uri)


def test_executor_equals_nsl_build_graph(tmp_path):
  from tfx_nsl.nsl_compat import import_nsl
  nsl = import_nsl()
  vectors = clustered_embeddings(400, 12, 8, 0.7, seed=4)
  rows = _rows(vectors)
  graph, found, stats = _run_executor(
      tmp_path, {'train': rows}, embedding_features=['emb'],
      similarity_threshold=0.7, num_shards=3)
  assert len(graph_io.edge_files(graph.uri)) == 3

  examples_file = str(tmp_path / 'nsl.tfrecord')
  import tensorflow as tf
  with tf.io.TFRecordWriter(examples_file) as writer:
    for row in rows:
      writer.write(_example(row).SerializeToString())
  nsl_graph = str(tmp_path / 'nsl.tsv')
  nsl.tools.build_graph_from_config(
      [examples_file], nsl_graph, nsl.configs.GraphBuilderConfig(
          id_feature_name='id', embedding_feature_name='emb',
          similarity_threshold=0.7))
  expected = {}
  with open(nsl_graph) as f:
    for line in f:
      source, target, weight = graph_io.parse_edge_line(line)
      expected[(source, target)] = weight
  assert len(expected) > 1000
  assert found.keys() == expected.keys()
  for key, weight in expected.items():
    assert found[key] == pytest.approx(weight, abs=2e-6)
  assert stats['num_edges'] == len(expected)
  assert stats['num_nodes'] == 400
  assert graph.get_int_custom_property('num_edges') == len(expected)
  assert graph.get_int_custom_property('num_nodes') == 400


def test_executor_top_k_is_byte_identical_across_running_modes(tmp_path):
  vectors = clustered_embeddings(600, 10, 12, 0.6, seed=5)
  splits = {'train': _rows(vectors[:500]),
            'unlabeled': _rows(vectors[500:], prefix='u'),
            'eval': _rows(vectors[:50], prefix='e')}
  contents = []
  for mode in ('in_memory', 'multi_processing'):
    graph, found, stats = _run_executor(
        tmp_path, splits, name=mode, embedding_features=['emb'],
        similarity_threshold=0.0, max_neighbors=4, undirected=False,
        num_shards=2, mode=Exact(block_size=128),
        beam_args=[f'--direct_running_mode={mode}', '--direct_num_workers=2'])
    contents.append([open(p, 'rb').read()
                     for p in graph_io.edge_files(graph.uri)])
  assert contents[0] == contents[1]
  # Default splits: train + unlabeled, not eval.
  assert stats['examples_per_split'] == {'train': 500, 'unlabeled': 100}
  assert not any(s.startswith('e') for s, _ in found)
  expected = _brute_force_top_k(vectors.astype(np.float64), 4, 0.0)
  ids = [f'n{i:04d}' for i in range(500)] + [f'u{i:04d}' for i in range(100)]
  assert found.keys() == {(ids[s], ids[t]) for s, t in expected}
  assert stats['out_degree_histogram'] == {'4': 600}


def test_executor_lsh_reports_recall(tmp_path):
  vectors = clustered_embeddings(3000, 16, 30, 0.3, seed=6)
  _, found, stats = _run_executor(
      tmp_path, {'train': _rows(vectors)}, embedding_features=['emb'],
      similarity_threshold=0.0, max_neighbors=5, undirected=False,
      mode=Lsh(splits=5, rounds=6, recall_sample_size=300))
  assert stats['estimated_recall_at_k'] >= 0.9
  assert stats['num_edges'] == len(found) == 3000 * 5
  assert stats['counters']['lsh_buckets'] > 6


def test_executor_partition_mode_reports_recall(tmp_path):
  vectors = clustered_embeddings(3000, 16, 30, 0.3, seed=6)
  _, found, stats = _run_executor(
      tmp_path, {'train': _rows(vectors)}, embedding_features=['emb'],
      similarity_threshold=0.0, max_neighbors=5, undirected=False,
      mode=Partition(size=150, probes=4, recall_sample_size=300))
  assert stats['estimated_recall_at_k'] >= 0.9
  assert stats['num_edges'] == len(found) == 3000 * 5
  assert stats['counters']['partitions'] == 20
  assert stats['counters']['scored_pairs'] < 3000 * 3000 / 2
  assert stats['partition_probes'] == 4
  assert 'calibration_recall_at_k' not in stats


@pytest.mark.parametrize('mode', [Exact(), Partition(size=20, probes=2)])
def test_executor_contracts_components_past_the_budget(tmp_path, monkeypatch,
                                                       caplog, mode):
  """Past the budget the components come from the contraction rounds on the
  workers, equal to the one-process union-find's; where even the rounds'
  residue is over the budget, they are left out with a warning."""
  vectors = clustered_embeddings(300, 8, 12, 0.6, seed=8)
  settings = dict(embedding_features=['emb'], max_neighbors=3,
                  similarity_threshold=0.8, mode=mode, num_shards=3)
  _, found, within = _run_executor(tmp_path, {'train': _rows(vectors)},
                                   name='within', **settings)
  assert within['connected_components'] > 1
  assert within['isolated_nodes'] == 300 - len(
      {n for pair in found for n in pair}) > 0
  # 300 nodes at 4 MiB each pass the 1,024 MiB budget.
  monkeypatch.setattr(graph_core, 'COMPONENT_BYTES_PER_NODE', 4 << 20)
  # absl's own logger: an earlier test in the session may have raised its
  # level above INFO.
  caplog.set_level('INFO', logger='absl')
  _, found_past, past = _run_executor(tmp_path, {'train': _rows(vectors)},
                                      name='past', **settings)
  assert found_past == found
  assert past == {**within, 'counters': past['counters']}
  assert 'contraction rounds over' in caplog.text
  # Without rounds all 300 nodes are left, at 4 MiB each in the residue.
  monkeypatch.setattr(connectivity, 'CONTRACTION_ROUNDS', 0)
  monkeypatch.setattr(connectivity, 'RESIDUE_BYTES_PER_NODE', 4 << 20)
  _, _, left_out = _run_executor(tmp_path, {'train': _rows(vectors)},
                                 name='left_out', **settings)
  assert left_out['connected_components'] is None is left_out[
      'isolated_nodes']
  assert left_out['num_edges'] == within['num_edges']
  assert 'more than memory_budget_mb=1024' in caplog.text


@pytest.mark.parametrize('target', [0.9, 0.99])
def test_executor_partition_mode_calibrates_probes(tmp_path, target):
  """probes=None: the fewest probes whose recall on the calibration sample
  reaches the target; the recall estimate (another sample) follows it, and
  the work with it."""
  vectors = clustered_embeddings(4000, 16, 80, 0.6, seed=7)
  _, found, stats = _run_executor(
      tmp_path, {'train': _rows(vectors)}, embedding_features=['emb'],
      similarity_threshold=-1.0, max_neighbors=10, undirected=False,
      mode=Partition(size=100, target_recall=target, max_probes=20,
                     recall_sample_size=400))
  probes = stats['partition_probes']
  assert stats['counters']['probes'] == probes
  assert 1 < probes < 20
  assert stats['calibration_recall_at_k'] >= target
  assert stats['estimated_recall_at_k'] >= target - 0.03
  assert stats['num_edges'] == len(found) == 4000 * 10
  # Each node scans about `probes` regions of about `size` members.
  assert stats['counters']['scored_pairs'] < 4000 * 100 * (probes + 1)


def test_calibration_curve_is_the_pipelines_recall(tmp_path):
  """Where both samples hold every node, the recall the calibration
  predicts for the probes it chose is the recall the pipeline's graph has
  against a brute force: the curve is exact, not an estimate of another
  quantity."""
  vectors = clustered_embeddings(400, 8, 40, 0.7, seed=9)
  _, found, stats = _run_executor(
      tmp_path, {'train': _rows(vectors)}, embedding_features=['emb'],
      similarity_threshold=-1.0, max_neighbors=5, undirected=False,
      mode=Partition(size=10, target_recall=0.9, max_probes=30,
                     recall_sample_size=400))
  exact = {(f'n{s:04d}', f'n{t:04d}')
           for s, t in _brute_force_top_k(vectors, 5, -1.0)}
  recall = len(exact & set(found)) / len(exact)
  assert 1 < stats['partition_probes'] < 30
  assert recall < 1.0  # the probes chosen leave some neighbours out
  assert stats['calibration_recall_at_k'] == pytest.approx(recall, abs=1e-9)
  assert stats['estimated_recall_at_k'] == pytest.approx(recall, abs=1e-9)


@pytest.mark.parametrize('mode', [Exact(), Lsh(splits=3, rounds=4),
                                  Partition(size=8, probes=3)])
def test_undirected_adds_reverse_edges(tmp_path, mode):
  """Undirected: the directed graph and the reverse of each edge (partition
  mode adds them where it stores its edges, from the group's ids; 25
  partitions make 3 groups, so edges are also found visiting)."""
  vectors = clustered_embeddings(200, 6, 5, 0.5, seed=7)
  found = {}
  for undirected in (False, True):
    _, found[undirected], _ = _run_executor(
        tmp_path, {'train': _rows(vectors)}, name=f'u{undirected}',
        embedding_features=['emb'], similarity_threshold=0.0,
        max_neighbors=2, undirected=undirected, mode=mode, num_shards=3)
  expected = {(t, s): w for (s, t), w in found[False].items()}
  expected.update(found[False])
  assert found[True].keys() == expected.keys()
  assert len(expected) > len(found[False])
  for key, weight in found[True].items():
    assert weight == pytest.approx(expected[key], abs=1.5e-6)
    assert found[True][key[::-1]] == weight


def test_bad_inputs_are_counted_and_named(tmp_path, caplog):
  rng = np.random.RandomState(8)
  good = _rows(rng.rand(50, 4).astype(np.float32))
  bad = [
      {'id': 'no-emb', 'label': np.int64(0)},
      {'id': 'short', 'emb': np.ones(3, np.float32)},
      {'id': 'nan', 'emb': np.array([1, np.nan, 0, 0], np.float32)},
      {'id': 'inf', 'emb': np.array([1, np.inf, 0, 0], np.float32)},
      {'id': 'zero', 'emb': np.zeros(4, np.float32)},
      {'emb': np.array([1, 2, 3, 4], np.float32)},  # no id: derived
      {'id': ['two', 'ids'], 'emb': np.array([4, 3, 2, 1], np.float32)},
      {'id': 'tab\there', 'emb': np.array([4, 3, 2, 2], np.float32)},
      {'id': '', 'emb': np.array([4, 3, 1, 2], np.float32)},
  ]
  _, found, stats = _run_executor(
      tmp_path, {'train': good + bad, 'unlabeled': []},
      embedding_features=['emb'], similarity_threshold=0.5)
  counters = stats['counters']
  assert counters['missing_embedding'] == 1
  assert counters['wrong_dimension'] == 1
  assert counters['non_finite_embedding'] == 2
  assert counters['zero_embedding'] == 1
  assert counters['ids_derived_from_content'] == 1
  assert counters['unusable_id'] == 3
  assert stats['num_nodes'] == 51
  assert stats['empty_splits'] == ['unlabeled']
  nodes = {s for s, _ in found} | {t for _, t in found}
  assert not nodes & {'no-emb', 'short', 'nan', 'inf', 'zero'}
  assert any(n.startswith('sha256-') for n in nodes)
  for name in ('no-emb', 'short', 'nan', 'zero', "[b'two', b'ids']",
               "[b'']"):
    assert name in caplog.text
  assert '' not in nodes


@pytest.mark.parametrize('mode', ['exact', 'lsh'])
def test_no_examples_at_all_stops_the_run(tmp_path, mode):
  # lsh: the recall estimate, too, runs without a corpus.
  with pytest.raises(Exception, match=r"found no examples in splits \['train'\]"):
    _run_executor(tmp_path, {'train': []}, embedding_features=['emb'],
                  mode=mode)
  assert not os.path.exists(os.path.join(str(tmp_path), 'graph', '.corpus'))


def test_no_usable_example_stops_the_run(tmp_path):
  rows = [{'id': 'a', 'emb': np.zeros(3, np.float32)},
          {'id': ['b', 'c'], 'emb': np.ones(3, np.float32)}]
  with pytest.raises(Exception, match=r'none of the 2 examples.*1 have an '
                     r"unusable id feature 'id'.*1 are not finite, all zero or too large"):
    _run_executor(tmp_path, {'train': rows}, embedding_features=['emb'])


def test_duplicate_ids_stop_the_run(tmp_path):
  rows = _rows(np.random.RandomState(9).rand(10, 4))
  rows[3]['id'] = rows[7]['id']
  with pytest.raises(Exception, match='duplicate example ids.*n0007'):
    _run_executor(tmp_path / 'one', {'train': rows},
                  embedding_features=['emb'])
  copies = [{'emb': np.ones(4, np.float32)}] * 2 + rows[:3]
  with pytest.raises(Exception, match=r'neither an id feature .*identical '
                     r'records.*sha256-'):
    _run_executor(tmp_path / 'two', {'train': copies},
                  embedding_features=['emb'])


def test_missing_feature_everywhere_stops_the_run(tmp_path):
  rows = _rows(np.random.RandomState(9).rand(10, 4))
  with pytest.raises(Exception, match="'nope' is in none of the examples"):
    _run_executor(tmp_path, {'train': rows}, embedding_features=['nope'])


def test_several_features_are_concatenated(tmp_path):
  rng = np.random.RandomState(10)
  a, b = rng.rand(80, 3).astype(np.float32), rng.rand(80, 5).astype(np.float32)
  rows = [{'id': f'n{i:04d}', 'a': a[i], 'b': b[i]} for i in range(80)]
  _, found, _ = _run_executor(
      tmp_path, {'train': rows}, embedding_features=['a', 'b'],
      similarity_threshold=-1.0, max_neighbors=3, undirected=False)
  expected = _brute_force_top_k(np.hstack([a, b]).astype(np.float64), 3, -1.0)
  assert found.keys() == {(f'n{s:04d}', f'n{t:04d}') for s, t in expected}


def test_embedding_model_through_run_inference(tmp_path):
  """A SavedModel embedding (here: a fixed linear map) gives the same graph
  as computing that embedding by hand."""
  rng = np.random.RandomState(11)
  x = rng.rand(120, 6).astype(np.float32)
  projection = rng.standard_normal((6, 4)).astype(np.float32)

  model = linear_embedding_model(tmp_path / 'model', projection)
  rows = [{'id': f'n{i:04d}', 'x': x[i]} for i in range(120)]
  del rows[7]['id']  # Named by the digest of its record, as written.
  _, found, stats = _run_executor(
      tmp_path, {'train': rows}, model=model, similarity_threshold=0.0,
      max_neighbors=3, undirected=False)
  digest = graph_io.derive_example_id(
      _example(rows[7]).SerializeToString())
  names = [digest if i == 7 else f'n{i:04d}' for i in range(120)]
  expected = _brute_force_top_k((x @ projection).astype(np.float64), 3, 0.0)
  assert found.keys() == {(names[s], names[t]) for s, t in expected}
  assert stats['num_nodes'] == 120
  assert stats['counters']['ids_derived_from_content'] == 1


def test_component_validates_parameters_at_construction():
  from tfx.types import channel_utils, standard_artifacts
  from tfx_nsl.components import GraphBuilder
  examples = channel_utils.as_channel([standard_artifacts.Examples()])
  with pytest.raises(ValueError, match='embedding_features'):
    GraphBuilder(examples=examples)
  with pytest.raises(ValueError, match=r"similarity='l1' is not allowed: one of"):
    GraphBuilder(examples=examples, embedding_features=['x'], similarity='l1')
  with pytest.raises(ValueError, match='max_neighbors=0 is not allowed: must be >= 1'):
    GraphBuilder(examples=examples, embedding_features=['x'], max_neighbors=0)
  with pytest.raises(ValueError, match=r"mode='fast' is not allowed: give Exact\(\)"):
    GraphBuilder(examples=examples, embedding_features=['x'], mode='fast')
  with pytest.raises(ValueError, match='similarity_threshold=-inf is not allowed: a finite'):
    GraphBuilder(examples=examples, embedding_features=['x'],
                 similarity='dot', similarity_threshold=float('-inf'))
  builder = GraphBuilder(examples=examples, embedding_features=['x'],
                         max_neighbors=5)
  assert builder.exec_properties['max_neighbors'] == 5
  assert builder.outputs['graph'].type_name == 'tfx_nsl.Graph'


def test_loaded_files_stay_within_the_cache_capacity(tmp_path):
  from tfx_nsl.components.graph_builder import corpus
  paths = [corpus.store_arrays(str(tmp_path), f'f{i}',
                               v=np.full(1000, i, np.float32))
           for i in range(3)]  # 4,000 bytes each
  cache = corpus.FileCache()
  first = cache.load(paths[0], 10_000)
  assert cache.load(paths[0], 10_000) is first  # read once
  cache.load(paths[1], 10_000)
  cache.load(paths[2], 10_000)  # 12,000 bytes: the oldest goes
  assert cache.load(paths[0], 10_000) is not first
  np.testing.assert_array_equal(cache.load(paths[2], 1)['v'], 2)
  # Several go at once, from the middle of the order too.
  for path in paths:
    cache.load(path, 100_000)
  assert len(cache.load(paths[0], 4_000)) == 1


def test_stored_batches_keep_unusable_ids(tmp_path):
  from tfx_nsl.components.graph_builder import corpus
  batches = [corpus.EmbeddingBatch(
      np.array(['a', None], object), np.array([[2, -1], [2, 1]]),
      [np.arange(4, dtype=np.float32), np.ones(1, np.float32)]),
             corpus.EmbeddingBatch(
                 np.array(['c'], object), np.array([[2, 1]]),
                 [np.zeros(2, np.float32), np.ones(1, np.float32)])]
  batch = corpus.load_batch(corpus.store_batch(corpus.concat_batches(batches),
                                               str(tmp_path)))
  assert batch.ids.tolist() == ['a', None, 'c']
  np.testing.assert_array_equal(batch.lengths, [[2, -1], [2, 1], [2, 1]])
  np.testing.assert_array_equal(batch.flats[0], [0, 1, 2, 3, 0, 0])
  np.testing.assert_array_equal(batch.flats[1], [1, 1])


def test_graph_stats_merge_from_shards():
  rng = np.random.RandomState(3)
  edges = graph_core.Edges(rng.randint(0, 50, 300), rng.randint(0, 50, 300),
                           np.ones(300, np.float32))
  edges = graph_core.dedupe_max(edges)
  shard = edges.src * 4 // 60  # 60 nodes: 50..59 have no edges
  parts = [graph_core.stats_part(graph_core.take(edges, shard == s))
           for s in range(4)]
  merged = graph_core.final_stats(60, graph_core.merge_stats_parts(parts),
                                  [p.forest for p in parts])
  assert merged == graph_core.graph_stats(60, edges)
  assert merged['isolated_nodes'] >= 10
  # Against scipy on the whole edge list, on sparse random graphs.
  from scipy.sparse import coo_matrix
  from scipy.sparse.csgraph import connected_components
  for seed in range(5):
    rng = np.random.RandomState(seed)
    src, tgt = rng.randint(0, 400, 250), rng.randint(0, 400, 250)
    src, tgt = src[src != tgt], tgt[src != tgt]  # GraphBuilder has no loops
    edges = graph_core.dedupe_max(graph_core.Edges(
        src, tgt, np.ones(len(src), np.float32)))
    count, labels = connected_components(
        coo_matrix((np.ones(len(edges.src)), (edges.src, edges.tgt)),
                   shape=(400, 400)), connection='weak')
    parts = [graph_core.stats_part(graph_core.take(edges, edges.src % 7 == s))
             for s in range(7)]
    stats = graph_core.final_stats(400, graph_core.merge_stats_parts(parts),
                                   [p.forest for p in parts])
    assert stats['connected_components'] == count
    assert stats['largest_component'] == np.bincount(labels).max()
    assert stats['isolated_nodes'] == 400 - len(np.unique(np.r_[src, tgt]))


def test_component_stats_stream_forests_that_repeat_nodes():
  """Forests that share nodes (a hub in every one, chains across them)
  join into one component; a long chain of forests, each linking the last
  one's root to a new node, stays correct whatever the path lengths."""
  parts = [graph_core.stats_part(graph_core.Edges(
      np.array([s, s + 1]), np.array([0, 0]), np.ones(2, np.float32)))
           for s in range(1, 15)]
  assert graph_core.component_stats(16, [p.forest for p in parts]) == {
      'isolated_nodes': 0, 'connected_components': 1, 'largest_component': 16}
  chain = [(np.array([n]), np.array([n + 1])) for n in range(200, 0, -1)]
  assert graph_core.component_stats(300, chain) == {
      'isolated_nodes': 99, 'connected_components': 100,
      'largest_component': 201}
  assert graph_core.component_stats(3, []) == {
      'isolated_nodes': 3, 'connected_components': 3, 'largest_component': 1}


def _contracted_stats(num_nodes, forests, rounds, buckets):
  """connectivity's rounds, then summarize() as the executor calls it:
  (component stats, nodes left for the union-find)."""
  roots = np.concatenate([f[0] for f in forests] + [np.zeros(0, np.int64)])
  members = np.concatenate([f[1] for f in forests] + [np.zeros(0, np.int64)])
  finished, pairs, weights = connectivity.contract_all(
      connectivity.merge_pairs([connectivity.forest_pairs(roots, members)]),
      connectivity.node_weights(0, num_nodes), rounds, buckets)
  sizes = np.concatenate(finished + [connectivity.finish(pairs, weights)])
  assert sizes.sum() == num_nodes  # every node in exactly one component
  with tempfile.TemporaryDirectory() as directory:
    residue = [(len(weights.nodes), len(pairs.src), corpus_lib.store_arrays(
        directory, 'w', a=weights.nodes, b=weights.weights),
                corpus_lib.store_arrays(directory, 'p', a=pairs.src,
                                        b=pairs.tgt))]
    stats, left = connectivity.summarize(
        [(r, len(f), int(f.max(initial=0))) for r, f in enumerate(finished)
         if len(f)], residue, 1 << 30)
  assert stats['connected_components'] == len(sizes)
  return stats, left


@pytest.mark.parametrize('graph', ['knn', 'sequence', 'stars', 'chain'])
def test_contraction_rounds_give_the_union_finds_components(graph):
  """The contraction (any rounds, any buckets) gives component_stats'
  components on graphs that are hard for it: neighbours at nearby ids (a
  sequence), one large star, forests chained across shards."""
  rng = np.random.RandomState(3)
  n = 3000
  if graph == 'knn':  # 10 neighbours within clusters of 50, ids shuffled
    ids = rng.permutation(n)
    src = np.repeat(np.arange(n - 100), 10)
    tgt = src // 50 * 50 + rng.randint(50, size=len(src))
    src, tgt = ids[src], ids[tgt]
  elif graph == 'sequence':  # each node to the next 5 ids, in 3 runs
    src = np.repeat(np.arange(n), 5)
    tgt = src + np.tile(np.arange(1, 6), n)
    keep = (tgt < n) & (tgt // 1000 == src // 1000)
    src, tgt = src[keep], tgt[keep]
  elif graph == 'stars':
    src, tgt = np.full(n - 1, 1234), np.r_[0:1234, 1235:n]
  else:
    src, tgt = np.arange(200, 0, -1), np.arange(201, 1, -1)
  forests = [graph_core.spanning_forest(src[part], tgt[part]) for part in
             np.array_split(rng.permutation(len(src)), 7)]
  expected = graph_core.component_stats(n, forests)
  residues = []
  for rounds, buckets in [(0, 1), (1, 1), (2, 5), (4, 7)]:
    found, residue = _contracted_stats(n, forests, rounds, buckets)
    assert found == expected, (rounds, buckets)
    residues.append(residue)
  assert residues[0] == n  # no round: everything is left to the union-find
  # The rounds shrink what is left.
  assert residues[-1] < residues[0] / 10


def test_stats_leave_out_components_without_forests():
  edges = graph_core.Edges(np.arange(20), np.arange(1, 21),
                           np.ones(20, np.float32))
  parts = [graph_core.stats_part(graph_core.take(edges, edges.src < 10)),
           graph_core.stats_part(graph_core.take(edges, edges.src >= 10))]
  stats = graph_core.final_stats(30, graph_core.merge_stats_parts(parts), None)
  assert stats['connected_components'] is None
  assert stats['isolated_nodes'] is None
  assert stats['num_edges'] == 20
  assert graph_core.final_stats(30, graph_core.merge_stats_parts(parts), [
      p.forest for p in parts])['largest_component'] == 21


@pytest.mark.parametrize('mode, params', [
    (Exact(block_size=100), dict(max_neighbors=4, undirected=True)),
    (Exact(block_size=100), dict(similarity_threshold=0.7)),
    (Lsh(splits=4, rounds=3, max_bucket_size=64, recall_sample_size=100),
     dict(max_neighbors=4, undirected=True)),
    (Partition(size=60, probes=3, recall_sample_size=100),
     dict(max_neighbors=4, undirected=False)),
])
def test_many_node_shards_give_the_same_graph(tmp_path, mode, params):
  """The corpus cut into id-range shards (as a small memory budget does)
  gives the graph of one shard, on two workers."""
  vectors = clustered_embeddings(700, 8, 10, 0.5, seed=13)
  rows = _rows(vectors[:400]) + _rows(vectors[400:], prefix='m')
  params.setdefault('similarity_threshold', 0.0)
  graphs = []
  for shards in (1, 7):
    graph, found, stats = _run_executor(
        tmp_path, {'train': rows}, name=f'shards{shards}', mode=mode,
        embedding_features=['emb'], num_shards=shards,
        beam_args=['--direct_running_mode=multi_processing',
                   '--direct_num_workers=2'], **params)
    assert len(graph_io.edge_files(graph.uri)) == shards
    assert stats['num_nodes'] == 700
    if params.get('max_neighbors') and not params.get('undirected'):
      # each source's top-k, once
      assert max(collections.Counter(s for s, _ in found).values()) <= (
          params['max_neighbors'])
    graphs.append((found, {k: v for k, v in stats.items()
                           if k not in ('counters', 'config')}))
  assert graphs[0][0].keys() == graphs[1][0].keys()
  # Other shards, other blocks of the float32 products: a last-bit change
  # can move a weight's 6th written decimal by one.
  for key, weight in graphs[0][0].items():
    assert graphs[1][0][key] == pytest.approx(weight, abs=1.5e-6)
  assert graphs[0][1] == graphs[1][1]  # stats, recall included
  if mode.NAME == 'exact':
    expected = _brute_force_top_k(vectors.astype(np.float64),
                                  params.get('max_neighbors'),
                                  params['similarity_threshold'])
    ids = [f'n{i:04d}' for i in range(400)] + [f'm{i:04d}' for i in range(300)]
    expected = {(ids[s], ids[t]) for s, t in expected}
    if params.get('undirected'):
      expected |= {(t, s) for s, t in expected}
    assert graphs[1][0].keys() == expected


def test_shards_follow_the_memory_budget():
  from tfx_nsl.components.graph_builder import corpus
  mib = 2**20
  # 50,000 nodes a shard by default ...
  assert corpus.num_shards(1_000_000, 64, 0, 1024 * mib) == 20
  # ... more where a shard's vectors would pass a quarter of the budget:
  # 102 MB of vectors in 16 MiB shards, not 4 of 50,000 nodes.
  assert corpus.num_shards(200_000, 128, 0, 64 * mib) == 7
  assert corpus.num_shards(1_000_000, 64, 3, 1024 * mib) == 3
  assert corpus.num_shards(100_000_000, 64, 0, 1024 * mib) == 256
  assert corpus.num_shards(1_000_000_000, 64, 0, 1024 * mib) == 954
  summary = corpus.merge_summaries([
      corpus.summarize(corpus.EmbeddingBatch(
          np.array([f'{i:05d}' for i in range(j, 40_000, 2)], object),
          np.full((20_000, 1), 8), [np.zeros(160_000, np.float32)]))
      for j in (0, 1)])
  assert len(summary.id_sample) == corpus.ID_SAMPLE_SIZE
  plan = corpus.plan(summary, ['emb'], 4, 1024 * mib)
  assert plan.dims == [8]
  # Boundaries near the quartiles of the ids.
  quartiles = [int(b) for b in plan.boundaries]
  assert np.allclose(quartiles, [10_000, 20_000, 30_000], atol=600)


@pytest.mark.parametrize('mode', [Exact(block_size=50), Lsh(splits=3, rounds=2),
                                  Partition(size=40, probes=2)])
def test_small_shuffle_elements_give_the_same_graph(tmp_path, monkeypatch,
                                                    mode):
  """Every edge element into a shuffle is cut to corpus.ELEMENT_BYTES
  (Flink's pre-grouping fails on larger records); the cuts do not change the
  graph."""
  from tfx_nsl.components.graph_builder import corpus
  vectors = clustered_embeddings(300, 8, 6, 0.5, seed=14)
  found = []
  for element_bytes in (corpus.ELEMENT_BYTES, 600):
    monkeypatch.setattr(corpus, 'ELEMENT_BYTES', element_bytes)
    _, edges, stats = _run_executor(
        tmp_path, {'train': _rows(vectors)}, name=f'e{element_bytes}',
        embedding_features=['emb'], similarity_threshold=0.0,
        max_neighbors=3, num_shards=3, mode=mode)
    found.append((edges, stats['num_edges'], stats['connected_components']))
  assert found[0] == found[1]


def test_routed_rows_travel_as_files(tmp_path):
  """Rows into a GroupByKey are stored; the shuffle carries Runs (a path,
  an offset and the fields: a few hundred bytes), which load back as the
  rows, whatever their number."""
  from tfx_nsl.components.graph_builder import corpus
  ids = corpus.encode_ids([f'{i:05d}' for i in range(30_000)])
  vectors = np.random.RandomState(3).rand(30_000, 64).astype(np.float32)
  routed = list(corpus.route(ids[::-1], vectors[::-1], np.array([b'20000']),
                             str(tmp_path)))
  assert [shard for shard, _ in routed] == [0, 1]
  assert all(len(pickle.dumps(run)) < 500 for _, run in routed)
  assert len({run.path for _, run in routed}) == 1  # one file a call
  for (shard, run), rows in zip(routed, (slice(0, 20_000),
                                         slice(20_000, None))):
    loaded = corpus.load_runs([run])
    order = np.argsort(loaded['ids'])
    np.testing.assert_array_equal(loaded['ids'][order], ids[rows])
    np.testing.assert_array_equal(loaded['vectors'][order], vectors[rows])
  # Two Runs of a key concatenate.
  both = corpus.load_runs([routed[0][1], routed[1][1]])
  assert both['vectors'].shape == (30_000, 64)
  assert corpus.store_runs(str(tmp_path), 'none', ids[:0], ids=ids[:0]) == []


@pytest.mark.parametrize('gap', [0, 100, 1 << 20])
@pytest.mark.parametrize('filesystem', ['local', 'ram://'])
def test_runs_load_the_same_rows_in_stretches(tmp_path, monkeypatch, gap,
                                              filesystem):
  """load_runs reads neighbouring runs of a file in one stretch (skipping
  the runs between that were not asked for) and gives each asked run's
  rows, whatever the gap allowed; on local paths through built-in files,
  elsewhere (here TensorFlow's in-memory ram://) through tf.io.gfile."""
  from tfx_nsl.components.graph_builder import corpus
  monkeypatch.setattr(corpus, '_RUN_GAP_BYTES', gap)
  opened, real_gfile = [], tf.io.gfile.GFile
  def gfile(path, mode):
    opened.append(path)
    return real_gfile(path, mode)
  monkeypatch.setattr(corpus.tf.io.gfile, 'GFile', gfile)
  if filesystem != 'local':
    tmp_path = f'ram://{tmp_path}'
    tf.io.gfile.makedirs(tmp_path)
  rng = np.random.RandomState(5)
  keys = rng.randint(0, 6, 500)
  ids = np.arange(500, dtype=np.int64)
  vectors = rng.rand(500, 7).astype(np.float32)
  probes = rng.randint(0, 9, (500, 3)).astype(np.int32)
  runs = [dict(corpus.store_runs(str(tmp_path), f'f{i}', keys, ids=ids + i,
                                 vectors=vectors, probes=probes))
          for i in (0, 1000)]
  asked = [runs[0][4], runs[1][0], runs[0][0], runs[0][2], runs[0][3]]
  loaded = corpus.load_runs(asked)
  order = np.argsort(loaded['ids'])
  rows = np.r_[np.flatnonzero(np.isin(keys, [0, 2, 3, 4])),
               np.flatnonzero(keys == 0)]
  expected_ids = np.r_[ids[np.isin(keys, [0, 2, 3, 4])],
                       ids[keys == 0] + 1000]
  expected = np.argsort(expected_ids)
  np.testing.assert_array_equal(loaded['ids'][order], expected_ids[expected])
  np.testing.assert_array_equal(loaded['vectors'][order],
                                vectors[rows][expected])
  np.testing.assert_array_equal(loaded['probes'][order],
                                probes[rows][expected])
  path = corpus.store_arrays(str(tmp_path), 'a', x=vectors)
  np.testing.assert_array_equal(corpus.load_arrays(path)['x'], vectors)
  # 2 runs files and 1 arrays file written, 2 + 1 read.
  assert len(opened) == (0 if filesystem == 'local' else 6)


def test_duplicate_ids_meet_in_one_shard(tmp_path):
  """Shards are id ranges, so copies of an id always meet and are found,
  however many shards there are."""
  rows = _rows(np.random.RandomState(15).rand(60, 4))
  rows[5]['id'] = rows[50]['id']
  with pytest.raises(Exception, match='1 duplicate example ids.*n0050'):
    _run_executor(tmp_path, {'train': rows[:30], 'unlabeled': rows[30:]},
                  embedding_features=['emb'], num_shards=6)


@pytest.mark.parametrize('undirected', [False, True])
def test_lsh_without_top_k_dedupes_rounds_once(tmp_path, undirected):
  """Without a top-k, LSH edges met in several rounds are merged once per
  shard: the same edges as the kernels over the whole corpus, each once."""
  vectors = clustered_embeddings(400, 8, 8, 0.4, seed=16)
  mode = Lsh(splits=3, rounds=4, max_bucket_size=80)
  graph, found, _ = _run_executor(
      tmp_path, {'train': _rows(vectors)}, embedding_features=['emb'],
      similarity_threshold=0.8, undirected=undirected, num_shards=3,
      mode=mode)
  corpus, _ = graph_core.prepare_vectors(vectors, graph_core.COSINE)
  expected = graph_core.merge_edges(
      [graph_core.bucket_edges(b, corpus[b], None, 0.8)
       for r in range(mode.rounds)
       for b in graph_core.lsh_buckets(corpus, mode.splits, mode.seed + r,
                                       mode.max_bucket_size)], None, True)
  pairs = {(f'n{s:04d}', f'n{t:04d}'): w
           for s, t, w in zip(*expected[:3])}
  if undirected:
    pairs.update({(t, s): w for (s, t), w in list(pairs.items())})
  assert len(pairs) > 100
  assert found.keys() == pairs.keys()
  for key, weight in pairs.items():
    assert found[key] == pytest.approx(weight, abs=1e-6)
  lines = [l for p in graph_io.edge_files(graph.uri) for l in open(p)]
  assert len(lines) == len(found)  # each edge once
