"""Pure numpy functions of the graph builder; no TFX, no Beam.

Nodes are indices into a corpus sorted by example id, so "ascending index"
means "ascending id" and every tie of equal scores is broken the same way on
every runner. Equal vectors need not give equal scores: a blocked float32
product may round them one ulp apart, and then that, not the id, orders them.
Edges travel as three parallel arrays (source index, target index, weight)
rather than one Python object per edge.
"""
import collections
from concurrent import futures

import numpy as np

COSINE = 'cosine'
DOT = 'dot'
SIMILARITIES = (COSINE, DOT)

# Entries of one similarity chunk (rows x corpus): ~128 MB of float32 per
# scoring thread.
MAX_CHUNK_ENTRIES = 1 << 25
# Top-k selection: columns sampled for a per-row lower bound of the k-th
# score, and the most candidates a row (times k) before the exact tie path.
_TOP_K_SAMPLE = 4096
_MAX_CANDIDATES_PER_K = 64

Edges = collections.namedtuple('Edges', ['src', 'tgt', 'weight'])


def empty_edges():
  return Edges(np.zeros(0, np.int64), np.zeros(0, np.int64),
               np.zeros(0, np.float32))


def concat_edges(parts):
  parts = [p for p in parts if len(p.src)]
  if not parts:
    return empty_edges()
  return Edges(*(np.concatenate(a) for a in zip(*parts)))


# Dot products of vectors longer than this overflow float32.
MAX_DOT_NORM = float(np.sqrt(np.finfo(np.float32).max))


def too_large_for_dot(vectors):
  """Rows whose dot products with themselves overflow float32."""
  return np.linalg.norm(np.asarray(vectors, np.float64), axis=1) > MAX_DOT_NORM


def prepare_vectors(vectors, similarity):
  """Float32 copy of `vectors`, L2-normalized for cosine similarity.

  Returns (vectors, usable) where `usable` is False for rows that cannot take
  part: non-finite values; for cosine an all-zero vector, which has no
  direction; for dot a vector whose dot products overflow float32. Each row
  is divided by its largest magnitude before its norm is taken, so the norm
  neither overflows (values near the float32 limit) nor underflows to zero
  (tiny but nonzero values).
  """
  vectors = np.asarray(vectors, np.float32)
  usable = np.isfinite(vectors).all(axis=1)
  if similarity == COSINE:
    finite = np.where(usable[:, None], vectors, 0.0)
    scale = (np.abs(finite).max(axis=1) if finite.shape[1]
             else np.zeros(len(finite), np.float32))
    usable &= scale > 0
    vectors = vectors / np.where(usable, scale, 1.0)[:, None]
    norms = np.linalg.norm(np.where(usable[:, None], vectors, 0.0), axis=1)
    vectors = vectors / np.where(usable, norms, 1.0)[:, None]
  else:
    usable &= ~too_large_for_dot(np.where(usable[:, None], vectors, 0.0))
  return vectors.astype(np.float32, copy=False), usable


def _self_mask(scores, row_ids, col_ids):
  """Sets each row's own column (if present) to -inf: no self-edges."""
  # col_ids is sorted: find each row's own column, if present.
  position = np.minimum(np.searchsorted(col_ids, row_ids), len(col_ids) - 1)
  own = col_ids[position] == row_ids
  scores[np.flatnonzero(own), position[own]] = -np.inf


def _top_k_lower_bound(scores, k):
  """Per row, a value that at least k of the row's scores reach.

  The k-th largest score of a strided sample of the columns: cheap (the
  sample is small), and every one of the row's true top-k scores is >= it,
  so `scores >= bound` keeps all of them plus a few more candidates.
  """
  cols = scores.shape[1]
  sample_size = min(cols, max(_TOP_K_SAMPLE, 16 * k))
  sample = scores[:, ::max(1, cols // sample_size)]
  return np.partition(sample, sample.shape[1] - k, axis=1)[:, -k]


def select_neighbors(scores, row_ids, col_ids, max_neighbors, threshold):
  """Edges row -> col with score >= threshold, at most `max_neighbors` a row.

  Args:
    scores: [rows, cols] float32 similarities; overwritten.
    row_ids, col_ids: node index of each row / column (col_ids sorted); a
      node is never its own neighbor.
    max_neighbors: None for all neighbors above the threshold (NSL's
      semantics), else the top-k by (score desc, node index asc).
    threshold: minimum similarity.

  Exact, and cheap when k is small against the row length: one comparison
  pass with a per-row lower bound of the k-th score (from a column sample)
  leaves a few candidates a row, and only those are sorted. No full-row
  argpartition, no copies of the chunk.
  """
  _self_mask(scores, row_ids, col_ids)
  rows_n, cols_n = scores.shape
  k = max_neighbors
  if k is None or k >= cols_n - 1 or not rows_n:
    rows, cols = _sparse_nonzero(scores >= threshold)
  else:
    bound = np.maximum(_top_k_lower_bound(scores, k), threshold)
    passing = scores >= bound[:, None]
    if np.count_nonzero(passing) <= _MAX_CANDIDATES_PER_K * k * rows_n:
      rows, cols = _sparse_nonzero(passing)
    else:  # many exact ties (e.g. duplicate vectors): exact k-th per row
      rows, cols = _ties_top_k(scores, k, threshold)
  weights = scores[rows, cols]
  edges = Edges(row_ids[rows].astype(np.int64), col_ids[cols].astype(np.int64),
                weights.astype(np.float32))
  return top_k_per_source(edges, max_neighbors)


def _sparse_nonzero(mask):
  """np.nonzero of a 2-d bool array with few True values, ~3x faster: scan
  it as 64-bit words and expand only the words that are not zero."""
  flat = np.ascontiguousarray(mask).reshape(-1)
  pad = (-flat.size) % 8
  if pad:
    flat = np.concatenate([flat, np.zeros(pad, bool)])
  words = np.flatnonzero(flat.view(np.uint64))
  word_index, byte = np.nonzero(flat.reshape(-1, 8)[words])
  return np.divmod(words[word_index] * 8 + byte, mask.shape[1])


def _ties_top_k(scores, k, threshold):
  """(rows, cols) of each row's top-k by (score desc, column asc); exact and
  memory-bounded however many scores tie."""
  cols_n = scores.shape[1]
  kth = np.partition(scores, cols_n - k, axis=1)[:, cols_n - k]
  kth = np.maximum(kth, threshold)
  above = scores > kth[:, None]
  rows, cols = np.nonzero(above)
  needed = k - np.bincount(rows, minlength=len(scores))
  extra_rows, extra_cols = [], []
  for row in np.flatnonzero(needed > 0):
    tied = np.flatnonzero(scores[row] == kth[row])[:needed[row]]
    extra_rows.append(np.full(len(tied), row))
    extra_cols.append(tied)
  return (np.concatenate([rows] + extra_rows).astype(np.int64),
          np.concatenate([cols] + extra_cols).astype(np.int64))


def top_k_per_source(edges, max_neighbors):
  """Sorts by (src, weight desc, tgt) and keeps `max_neighbors` per source."""
  order = np.lexsort((edges.tgt, -edges.weight, edges.src))
  edges = Edges(*(a[order] for a in edges))
  if max_neighbors is None or not len(edges.src):
    return edges
  starts = np.flatnonzero(np.r_[True, edges.src[1:] != edges.src[:-1]])
  rank = np.arange(len(edges.src)) - np.repeat(starts, np.diff(
      np.r_[starts, len(edges.src)]))
  keep = rank < max_neighbors
  return Edges(*(a[keep] for a in edges))


def dedupe_max(edges):
  """One edge per (src, tgt), keeping the largest weight (as NSL does)."""
  if not len(edges.src):
    return edges
  order = np.lexsort((-edges.weight, edges.tgt, edges.src))
  edges = Edges(*(a[order] for a in edges))
  first = np.r_[True, (edges.src[1:] != edges.src[:-1]) |
                (edges.tgt[1:] != edges.tgt[:-1])]
  return Edges(*(a[first] for a in edges))


def chunk_rows(num_corpus, max_entries=MAX_CHUNK_ENTRIES):
  return max(1, min(num_corpus, max_entries // max(1, num_corpus)))


def exact_edges(query_ids, corpus, max_neighbors, threshold,
                max_entries=MAX_CHUNK_ENTRIES):
  """Edges from the corpus rows `query_ids` to their neighbors in `corpus`.

  One matrix product per chunk of query rows; memory is the corpus plus one
  chunk of scores, never N x N.
  """
  step = chunk_rows(len(corpus), max_entries)
  all_ids = np.arange(len(corpus))
  parts = []
  for start in range(0, len(query_ids), step):
    rows = query_ids[start:start + step]
    scores = corpus[rows] @ corpus.T
    parts.append(select_neighbors(scores, rows, all_ids, max_neighbors,
                                  threshold))
  return concat_edges(parts)


def pair_edges(start, end, corpus, threshold, max_entries=MAX_CHUNK_ENTRIES):
  """Every pair {i, j} with i in [start, end), j > i and similarity >=
  threshold, as both directed edges: NSL's semantics (all neighbors above
  the threshold, no top-k), each pair scored once, as NSL scores it. Half
  the products of `exact_edges`, and the edges come out symmetric, so no
  reverse-edge pass is needed."""
  parts = []
  step = chunk_rows(len(corpus) - start, max_entries)
  for a in range(start, end, step):
    b = min(end, a + step)
    scores = corpus[a:b] @ corpus[a:].T
    # Column c is node a + c; keep c > row (j > i).
    scores[:, :b - a][np.tri(b - a, dtype=bool)] = -np.inf
    rows, cols = _sparse_nonzero(scores >= threshold)
    src, tgt = rows + a, cols + a
    weights = scores[rows, cols].astype(np.float32)
    parts.append(Edges(np.r_[src, tgt], np.r_[tgt, src],
                       np.r_[weights, weights]))
  return concat_edges(parts)


def lsh_buckets(corpus, num_splits, seed, max_bucket_size):
  """Random-hyperplane LSH: lists of corpus indices sharing a bucket.

  A bucket larger than `max_bucket_size` is cut into consecutive pieces by
  its projection on one more random direction, so the cost of one bucket
  stays bounded while near points still tend to stay together.
  """
  rng = np.random.RandomState(seed)
  planes = rng.standard_normal((num_splits, corpus.shape[1])).astype(np.float32)
  bits = (corpus @ planes.T) >= 0
  codes = bits.astype(np.int64) @ (1 << np.arange(num_splits, dtype=np.int64))
  direction = rng.standard_normal(corpus.shape[1]).astype(np.float32)
  order = np.lexsort((corpus @ direction, codes))
  sorted_codes = codes[order]
  bounds = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1],
                                True])
  buckets = []
  for start, end in zip(bounds[:-1], bounds[1:]):
    for piece in range(start, end, max_bucket_size):
      members = order[piece:min(end, piece + max_bucket_size)]
      if len(members) > 1:
        buckets.append(np.sort(members))
  return buckets


def bucket_edges(members, corpus, max_neighbors, threshold):
  """All-pairs edges inside one LSH bucket, as one matrix product."""
  vectors = corpus[members]
  return select_neighbors(vectors @ vectors.T, members, members, max_neighbors,
                          threshold)


def partition_centroids(corpus, num_partitions, seed, iterations=4):
  """Unit centroids of `num_partitions` regions: spherical k-means, a few
  Lloyd iterations on a sample of the corpus, started at random points."""
  rng = np.random.RandomState(seed)
  num_partitions = max(1, min(num_partitions, len(corpus)))
  sample = corpus[np.sort(rng.choice(
      len(corpus), min(len(corpus), 32 * num_partitions), replace=False))]
  sample = sample / np.maximum(np.linalg.norm(sample, axis=1), 1e-30)[:, None]
  centroids = sample[rng.choice(len(sample), num_partitions, replace=False)]
  for _ in range(iterations):
    nearest = np.concatenate([
        np.argmax(sample[b:b + 8192] @ centroids.T, axis=1)
        for b in range(0, len(sample), 8192)])
    sums = np.zeros_like(centroids)
    np.add.at(sums, nearest, sample)
    norms = np.linalg.norm(sums, axis=1)
    filled = norms > 0  # an empty region keeps its old centroid
    centroids[filled] = sums[filled] / norms[filled, None]
  return centroids.astype(np.float32)


def nearest_partitions(corpus, centroids, probes,
                       max_entries=MAX_CHUNK_ENTRIES):
  """[N, probes] indices of each row's nearest centroids, nearest first
  (ties: lower index). `probes` argmax passes: faster than a partition for
  the few probes this is meant for."""
  probes = min(probes, len(centroids))
  step = chunk_rows(len(centroids), max_entries)
  out = np.empty((len(corpus), probes), np.int32)
  for start in range(0, len(corpus), step):
    scores = corpus[start:start + step] @ centroids.T
    index = np.arange(len(scores))
    for probe in range(probes):
      best = np.argmax(scores, axis=1)
      out[start + index, probe] = best
      scores[index, best] = -np.inf
  return out


Partitioning = collections.namedtuple('Partitioning',
                                      ['probes', 'order', 'bounds', 'groups'])

# Partitions whose nodes form one unit of work: neighbouring partitions
# probe mostly the same partitions, so grouping them makes each per-partition
# matrix product taller (small products are dominated by call overheads).
PARTITIONS_PER_BLOCK = 8
_MAX_BLOCK_QUERIES = 8192


def partitioning(probes, centroids, seed=0):
  """Members of each partition p (the nodes whose nearest centroid it is):
  order[bounds[p]:bounds[p + 1]], ascending node indices; `groups`: lists of
  neighbouring partitions (by k-means on the centroids)."""
  primary = probes[:, 0]
  num_partitions = len(centroids)
  order = np.argsort(primary, kind='stable')
  bounds = np.searchsorted(primary[order], np.arange(num_partitions + 1))
  num_groups = max(1, num_partitions // PARTITIONS_PER_BLOCK)
  group_of = np.argmax(centroids @ partition_centroids(
      centroids, num_groups, seed).T, axis=1)
  groups = [np.flatnonzero(group_of == g) for g in range(num_groups)]
  return Partitioning(probes, order, bounds, [g for g in groups if len(g)])


def partition_blocks(parts):
  """Units of work of 'partition' mode: (queries: the nodes whose nearest
  partition is in one group of neighbouring partitions, their probes
  [len(queries), P]). A node is a query in exactly one block. Small: the
  members of the probed partitions are looked up in `parts` by the scorer,
  not shipped."""
  for group in parts.groups:
    queries = np.concatenate([parts.order[parts.bounds[p]:parts.bounds[p + 1]]
                              for p in group])
    for start in range(0, len(queries), _MAX_BLOCK_QUERIES):
      chunk = queries[start:start + _MAX_BLOCK_QUERIES]
      if len(chunk):
        yield chunk, parts.probes[chunk]


def block_edges(queries, query_probes, parts, corpus, max_neighbors,
                threshold, max_entries=MAX_CHUNK_ENTRIES, threads=1):
  """Edges from each query to its neighbors among the members of the
  partitions its probes name: one matrix product per partition, against
  the queries that probe it. Returns (edges, pairs scored).

  The products are small, so `threads` score disjoint sets of partitions at
  once (numpy releases the GIL); the result does not depend on `threads`.
  """
  def score(partitions):
    edges, pairs = [], 0
    for partition in partitions:
      candidates = parts.order[parts.bounds[partition]:
                               parts.bounds[partition + 1]]
      rows = queries[(query_probes == partition).any(axis=1)]
      if not len(candidates) or not len(rows):
        continue
      vectors = corpus[candidates]
      step = chunk_rows(len(candidates), max_entries)
      for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        edges.append(select_neighbors(corpus[chunk] @ vectors.T, chunk,
                                      candidates, max_neighbors, threshold))
      pairs += len(rows) * len(candidates)
    # Each worker keeps only its own top-k: less to hold and to merge.
    return top_k_per_source(concat_edges(edges), max_neighbors), pairs

  partitions = np.unique(query_probes)
  if threads > 1 and len(partitions) > 1:
    with futures.ThreadPoolExecutor(threads) as pool:
      results = list(pool.map(score, np.array_split(
          partitions, min(len(partitions), 4 * threads))))
  else:
    results = [score(partitions)]
  return (top_k_per_source(concat_edges([e for e, _ in results]),
                           max_neighbors), sum(p for _, p in results))


def recall_at_k(found, exact, sample):
  """Share of the exact neighbors of `sample` nodes that `found` contains."""
  def pairs(edges):
    mask = np.isin(edges.src, sample)
    return set(zip(edges.src[mask].tolist(), edges.tgt[mask].tolist()))
  truth = pairs(exact)
  if not truth:
    return 1.0
  return len(truth & pairs(found)) / len(truth)


# Graph statistics in parts that merge: each shard of sources gives one, so
# no process needs the edge list for them (components aside, see below).
# degree_counts: {out-degree >= 1: sources with it}; touched: np.packbits of
# the nodes on an edge (None: none).
StatsPart = collections.namedtuple('StatsPart',
                                   ['num_edges', 'degree_counts', 'touched'])
MAX_COMPONENTS_EDGES = 20_000_000


def stats_part(num_nodes, edges):
  """The statistics of one set of sources' edges (all edges of each)."""
  if not len(edges.src):
    return StatsPart(0, {}, None)
  histogram = np.bincount(np.bincount(edges.src))
  touched = np.zeros(num_nodes, bool)
  touched[edges.src] = True
  touched[edges.tgt] = True
  return StatsPart(len(edges.src),
                   {d: int(c) for d, c in enumerate(histogram) if d and c},
                   np.packbits(touched))


def merge_stats_parts(parts):
  num_edges, counts, touched = 0, collections.Counter(), None
  for part in parts:
    num_edges += part.num_edges
    counts.update(part.degree_counts)
    if part.touched is not None:
      touched = part.touched if touched is None else touched | part.touched
  return StatsPart(num_edges, dict(counts), touched)


def connected_components(num_nodes, src, tgt):
  """(number of weakly connected components, size of the largest)."""
  from scipy.sparse import coo_matrix  # pylint: disable=g-import-not-at-top
  from scipy.sparse.csgraph import connected_components as components  # pylint: disable=g-import-not-at-top
  adjacency = coo_matrix((np.ones(len(src), np.int8), (src, tgt)),
                         shape=(num_nodes,) * 2)
  count, labels = components(adjacency, directed=True, connection='weak')
  return int(count), int(np.bincount(labels).max()) if num_nodes else 0


def final_stats(num_nodes, part, components=None):
  """Nodes, edges, out-degree histogram, isolated nodes and (when given, as
  connected_components' answer) components."""
  histogram = dict(part.degree_counts)
  without = num_nodes - sum(histogram.values())
  if without:
    histogram[0] = without
  touched = 0 if part.touched is None else int(
      np.unpackbits(part.touched)[:num_nodes].sum())
  stats = {
      'num_nodes': int(num_nodes),
      'num_edges': int(part.num_edges),
      'isolated_nodes': int(num_nodes - touched),
      'out_degree_histogram': {str(d): histogram[d] for d in sorted(histogram)},
      'max_out_degree': max(histogram) if histogram else 0,
      'mean_out_degree': part.num_edges / num_nodes if num_nodes else 0.0,
  }
  if components is None:
    stats['connected_components'] = None  # too many edges to be cheap
  else:
    stats['connected_components'], stats['largest_component'] = components
  return stats


def graph_stats(num_nodes, edges, max_components_edges=MAX_COMPONENTS_EDGES):
  """final_stats of one edge list."""
  components = (connected_components(num_nodes, edges.src, edges.tgt)
                if len(edges.src) <= max_components_edges else None)
  return final_stats(num_nodes, stats_part(num_nodes, edges), components)
