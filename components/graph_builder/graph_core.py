"""Pure numpy functions of the graph builder; no TFX, no Beam.

Nodes are indices into a corpus sorted by example id, so "ascending index"
means "ascending id" and every tie is broken the same way on every runner.
Edges travel as three parallel arrays (source index, target index, weight)
rather than one Python object per edge.
"""
import collections

import numpy as np

COSINE = 'cosine'
DOT = 'dot'
SIMILARITIES = (COSINE, DOT)

# Entries of one similarity chunk (rows x corpus); bounds memory to ~128 MB.
MAX_CHUNK_ENTRIES = 1 << 25

Edges = collections.namedtuple('Edges', ['src', 'tgt', 'weight'])


def empty_edges():
  return Edges(np.zeros(0, np.int64), np.zeros(0, np.int64),
               np.zeros(0, np.float32))


def concat_edges(parts):
  parts = [p for p in parts if len(p.src)]
  if not parts:
    return empty_edges()
  return Edges(*(np.concatenate(a) for a in zip(*parts)))


def prepare_vectors(vectors, similarity):
  """Float32 copy of `vectors`, L2-normalized for cosine similarity.

  Returns (vectors, usable) where `usable` is False for rows that cannot take
  part: non-finite values, or (cosine) a zero vector, which has no direction.
  """
  vectors = np.asarray(vectors, np.float32)
  usable = np.isfinite(vectors).all(axis=1)
  if similarity == COSINE:
    norms = np.linalg.norm(np.where(usable[:, None], vectors, 0.0), axis=1)
    usable &= norms > 0
    vectors = vectors / np.where(usable, norms, 1.0)[:, None]
  return vectors, usable


def select_neighbors(scores, row_ids, col_ids, max_neighbors, threshold):
  """Edges row -> col with score >= threshold, at most `max_neighbors` a row.

  Args:
    scores: [rows, cols] float32 similarities; overwritten.
    row_ids, col_ids: node index of each row / column (col_ids sorted); a
      node is never its own neighbor.
    max_neighbors: None for all neighbors above the threshold (NSL's
      semantics), else the top-k by (score desc, node index asc).
    threshold: minimum similarity.
  """
  # col_ids is sorted: find each row's own column, if present, and mask it.
  position = np.minimum(np.searchsorted(col_ids, row_ids), len(col_ids) - 1)
  own = col_ids[position] == row_ids
  scores[np.flatnonzero(own), position[own]] = -np.inf
  passing = scores >= threshold
  if max_neighbors is not None and max_neighbors < scores.shape[1]:
    # Few survivors: sort just those. Many: argpartition each row first.
    if passing.sum() > 4 * max_neighbors * scores.shape[0]:
      part = np.argpartition(-scores, max_neighbors - 1, axis=1)
      # Keep ties at the k-th score so the id tie-break below is exact.
      kth = np.take_along_axis(scores, part[:, max_neighbors - 1:max_neighbors],
                               axis=1)
      passing &= scores >= kth
  rows, cols = np.nonzero(passing)
  weights = scores[rows, cols]
  edges = Edges(row_ids[rows].astype(np.int64), col_ids[cols].astype(np.int64),
                weights.astype(np.float32))
  return top_k_per_source(edges, max_neighbors)


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


def with_reverse_edges(edges):
  return dedupe_max(Edges(np.r_[edges.src, edges.tgt],
                          np.r_[edges.tgt, edges.src],
                          np.r_[edges.weight, edges.weight]))


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


def recall_at_k(found, exact, sample):
  """Share of the exact neighbors of `sample` nodes that `found` contains."""
  def pairs(edges):
    mask = np.isin(edges.src, sample)
    return set(zip(edges.src[mask].tolist(), edges.tgt[mask].tolist()))
  truth = pairs(exact)
  if not truth:
    return 1.0
  return len(truth & pairs(found)) / len(truth)


def graph_stats(num_nodes, edges, max_components_edges=20_000_000):
  """Nodes, edges, out-degree histogram, isolated nodes, components."""
  degrees = np.bincount(edges.src, minlength=num_nodes) if num_nodes else (
      np.zeros(0, np.int64))
  touched = np.zeros(num_nodes, bool)
  touched[edges.src] = True
  touched[edges.tgt] = True
  histogram = np.bincount(degrees) if num_nodes else np.zeros(0, np.int64)
  stats = {
      'num_nodes': int(num_nodes),
      'num_edges': int(len(edges.src)),
      'isolated_nodes': int(num_nodes - touched.sum()),
      'out_degree_histogram': {str(d): int(c) for d, c in enumerate(histogram)
                               if c},
      'max_out_degree': int(degrees.max()) if num_nodes else 0,
      'mean_out_degree': float(degrees.mean()) if num_nodes else 0.0,
  }
  if len(edges.src) <= max_components_edges:
    from scipy.sparse import coo_matrix  # pylint: disable=g-import-not-at-top
    from scipy.sparse.csgraph import connected_components  # pylint: disable=g-import-not-at-top
    adjacency = coo_matrix((np.ones(len(edges.src), np.int8),
                            (edges.src, edges.tgt)), shape=(num_nodes,) * 2)
    count, labels = connected_components(adjacency, directed=True,
                                         connection='weak')
    sizes = np.bincount(labels) if num_nodes else np.zeros(0, np.int64)
    stats['connected_components'] = int(count)
    stats['largest_component'] = int(sizes.max()) if num_nodes else 0
  else:
    stats['connected_components'] = None  # too many edges to be cheap
  return stats
