"""Pure numpy (and, in partition mode, faiss) functions of the graph
builder; no TFX, no Beam.

Nodes are indices into a corpus sorted by example id, so "ascending index"
means "ascending id" and every tie of equal scores is broken the same way on
every runner (block_edges: see there). Equal vectors need not give equal
scores: a blocked float32 product may round them one ulp apart, and then
that, not the id, orders them.
Edges travel as parallel arrays (source index, target index, weight and,
between workers that do not hold the whole corpus, the targets' ids) rather
than one Python object per edge.
"""
import collections

import numpy as np

COSINE = 'cosine'
DOT = 'dot'
SIMILARITIES = (COSINE, DOT)

# Entries of one similarity chunk (rows x corpus): ~128 MB of float32 per
# scoring thread.
MAX_CHUNK_ENTRIES = 1 << 25
# Top-k selection (select_neighbors): the fewest column groups a row's
# maxima are taken over, and the most candidates a row (times k) before
# the exact tie path.
_COLUMN_GROUPS = 2048
_MAX_CANDIDATES_PER_K = 64

# tgt_id: the targets' ids as UTF-8 bytes, so that the worker writing a
# source's edges needs no other shard's ids; None where the caller holds them.
Edges = collections.namedtuple('Edges', ['src', 'tgt', 'weight', 'tgt_id'],
                               defaults=(None,))


def empty_edges():
  return Edges(np.zeros(0, np.int64), np.zeros(0, np.int64),
               np.zeros(0, np.float32))


def take(edges, index):
  """The edges at `index` (a mask or positions)."""
  return Edges(*(None if a is None else a[index] for a in edges))


def concat_edges(parts):
  parts = [p for p in parts if len(p.src)]
  if not parts:
    return empty_edges()
  named = all(p.tgt_id is not None for p in parts)
  return Edges(*(np.concatenate(a) for a in zip(*(p[:3] for p in parts))),
               np.concatenate([p.tgt_id for p in parts]) if named else None)


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


# Scores this close to the threshold (relative past magnitude 1, for dot
# similarity) are decided again in float64: a float32 product of unit
# vectors is off by up to about 1e-6, and by how it was blocked, so an edge
# at the threshold would depend on the shard layout (at 20,000 nodes one
# pair at cosine 0.89999985 came out >= 0.9).
THRESHOLD_SLACK = 1e-5


def _slack(threshold):
  return THRESHOLD_SLACK * max(1.0, abs(threshold))


def lowered(threshold):
  """The threshold candidates are found with: reach_threshold decides them."""
  return threshold - _slack(threshold)


def _float64_scores(left, right, unit):
  """Row-wise similarity of two [n, d] float32 arrays in float64; `unit`:
  rows meant to be unit (cosine), renormalized first."""
  left, right = left.astype(np.float64), right.astype(np.float64)
  dots = np.einsum('ij,ij->i', left, right)
  if unit:
    # One square root of the product of squared norms: equal rows give
    # exactly 1 (opposite rows -1), which the product of two norms misses
    # by an ulp, and an edge at threshold 1.0 would be lost.
    dots /= np.sqrt(np.einsum('ij,ij->i', left, left) *
                    np.einsum('ij,ij->i', right, right))
  return dots


def reach_threshold(weights, threshold, left, right, unit=True):
  """Mask of the candidates (float32 `weights`, found with the lowered
  threshold) whose similarity reaches `threshold`: those within the slack
  of it by float64 scores of left(i), right(i), the vectors of candidates
  i."""
  keep = weights >= threshold
  near = np.flatnonzero(np.abs(weights - threshold) <= _slack(threshold))
  if len(near):
    keep[near] = _float64_scores(left(near), right(near), unit) >= threshold
  return keep


def _reaching(rows, cols, weights, threshold, vectors, unit):
  """The candidates (rows of vectors[0], cols of vectors[1], weights) that
  reach the threshold, and the rows that lost one within the slack to the
  float64 decision."""
  keep = reach_threshold(weights, threshold, lambda i: vectors[0][rows[i]],
                         lambda i: vectors[1][cols[i]], unit)
  lost = ~keep & (weights >= lowered(threshold))
  return rows[keep], cols[keep], weights[keep], np.unique(rows[lost])


def _group_maxima(scores, groups):
  """[rows, groups]: each row's maximum over its columns c with
  c % groups == g. One pass over the chunk, and the k-th largest of a
  row's maxima is a lower bound of its k-th score (k groups reach it)."""
  rows_n, cols_n = scores.shape
  whole = cols_n - cols_n % groups
  maxima = scores[:, :whole].reshape(rows_n, -1, groups).max(axis=1)
  tail = cols_n - whole
  np.maximum(maxima[:, :tail], scores[:, whole:], out=maxima[:, :tail])
  return maxima


def _passing(scores, bound, maxima, limit):
  """np.nonzero(scores >= bound[:, None]) (in its row-major order), or
  None if more than `limit` pass. Reads again only the column groups
  whose maximum (`maxima`) reaches the row's bound; where many do, makes
  one full pass."""
  cols_n = scores.shape[1]
  groups = maxima.shape[1]
  members = -(-cols_n // groups)
  group_rows, group = _sparse_nonzero(maxima >= bound[:, None])
  if len(group) * members * 8 > scores.size:
    mask = scores >= bound[:, None]
    if np.count_nonzero(mask) > limit:
      return None
    return _sparse_nonzero(mask)
  cols = group[:, None] + groups * np.arange(members)
  inside = cols < cols_n
  values = scores[group_rows[:, None], np.where(inside, cols, 0)]
  keep = inside & (values >= bound[group_rows, None])
  rows = np.broadcast_to(group_rows[:, None], cols.shape)[keep]
  cols = cols[keep]
  if len(rows) > limit:
    return None
  order = np.argsort(rows * cols_n + cols)
  return rows[order], cols[order]


def select_neighbors(scores, row_ids, col_ids, max_neighbors, threshold,
                     col_names=None, vectors=None, unit=True):
  """Edges row -> col with score >= threshold, at most `max_neighbors` a row.

  Args:
    scores: [rows, cols] float32 similarities; overwritten.
    row_ids, col_ids: node index of each row / column (col_ids sorted); a
      node is never its own neighbor.
    max_neighbors: None for all neighbors above the threshold (NSL's
      semantics), else the top-k by (score desc, node index asc).
    threshold: minimum similarity.
    col_names: the columns' ids, for the edges' tgt_id (None: no ids).
    vectors: (rows' vectors, columns' vectors) that gave `scores`: scores
      near the threshold are decided in float64 (reach_threshold); None:
      in float32. unit: the vectors are unit (cosine).

  Exact, and cheap when k is small against the row length: one pass takes
  the maxima of column groups (_group_maxima), whose k-th largest bounds
  the row's k-th score; the groups that reach the bound hold a few
  candidates a row, and only those are sorted. No full-row argpartition,
  no copies of the chunk.
  """
  _self_mask(scores, row_ids, col_ids)
  rows_n, cols_n = scores.shape
  k = max_neighbors
  low = threshold if vectors is None else lowered(threshold)
  if k is None or k >= cols_n - 1 or not rows_n:
    rows, cols = _sparse_nonzero(scores >= low)
  else:
    groups = min(cols_n, max(_COLUMN_GROUPS, 16 * k))
    maxima = _group_maxima(scores, groups)
    # The k-th largest maximum of coarser groups (unions of groups) is a
    # lower bound too, a little looser, and 8x cheaper to select.
    coarse = _group_maxima(maxima, max(groups // 8, min(groups, 2 * k)))
    kth = coarse.shape[1] - k
    bound = np.maximum(np.partition(coarse, kth, axis=1)[:, kth], low)
    found = _passing(scores, bound, maxima,
                     limit=_MAX_CANDIDATES_PER_K * k * rows_n)
    # None: many exact ties (e.g. duplicate vectors): exact k-th per row.
    rows, cols = found if found is not None else _ties_top_k(scores, k, low)
  weights = scores[rows, cols]
  if vectors is not None:
    rows, cols, weights, short = _reaching(rows, cols, weights, threshold,
                                           vectors, unit)
    if k is not None and len(short):
      # A candidate dropped in float64 may have kept out one within the
      # slack that reaches the threshold: those rows take every column
      # that reaches the lowered threshold, and the top-k below keeps k.
      kept = ~np.isin(rows, short)
      more_rows, more_cols = np.nonzero(scores[short] >= low)
      more_rows = short[more_rows]
      more = _reaching(more_rows, more_cols, scores[more_rows, more_cols],
                       threshold, vectors, unit)
      rows, cols, weights = (np.r_[a[kept], b] for a, b in zip(
          (rows, cols, weights), more[:3]))
  edges = Edges(row_ids[rows].astype(np.int64), col_ids[cols].astype(np.int64),
                weights.astype(np.float32),
                None if col_names is None else col_names[cols])
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


def _fits_uint32(*arrays):
  return all(not len(a) or (a.min() >= 0 and a.max() < 1 << 32)
             for a in arrays)


def _packed(high, low):
  """uint64 keys ordered by (high, low), both under 2**32."""
  return (high.astype(np.uint64) << np.uint64(32)) | low.astype(np.uint64)


def _descending_weight_keys(weight):
  """uint32 keys that ascend as the float32 weights descend (-0.0 as 0.0)."""
  bits = (np.asarray(weight, np.float32) + np.float32(0)).view(np.uint32)
  ascending = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
  return ~ascending


def source_weight_order(src, weight, tgt):
  """The order by (src, weight desc, tgt): np.lexsort's, about 4x faster.

  (src, weight) packed in one uint64 key take one stable sort, which also
  runs fast over the presorted stretches edges usually come in (a block's
  sources in order, runs merged); only equal keys (tied weights of one
  source) are ordered by tgt afterwards.
  """
  if not _fits_uint32(src):
    return np.lexsort((tgt, -np.asarray(weight), src))
  keys = _packed(src, _descending_weight_keys(weight))
  order = np.argsort(keys, kind='stable')
  keys = keys[order]
  equal = keys[1:] == keys[:-1]
  if equal.any():
    tied = np.flatnonzero(np.r_[equal, False] | np.r_[False, equal])
    # Tied positions form runs in key order: sorting them by (key, tgt)
    # and putting them back keeps each run in its place.
    members = order[tied]
    order[tied] = members[np.lexsort((tgt[members], keys[tied]))]
  return order


def top_k_per_source(edges, max_neighbors):
  """Sorts by (src, weight desc, tgt) and keeps `max_neighbors` per source."""
  edges = take(edges, source_weight_order(edges.src, edges.weight, edges.tgt))
  if max_neighbors is None or not len(edges.src):
    return edges
  starts = np.flatnonzero(np.r_[True, edges.src[1:] != edges.src[:-1]])
  rank = np.arange(len(edges.src)) - np.repeat(starts, np.diff(
      np.r_[starts, len(edges.src)]))
  return take(edges, rank < max_neighbors)


def dedupe_max(edges):
  """One edge per (src, tgt), keeping the largest weight (as NSL does)."""
  if not len(edges.src):
    return edges
  if not _fits_uint32(edges.src, edges.tgt):
    edges = take(edges, np.lexsort((-edges.weight, edges.tgt, edges.src)))
    return take(edges, np.r_[True, (edges.src[1:] != edges.src[:-1]) |
                             (edges.tgt[1:] != edges.tgt[:-1])])
  # One stable sort of packed (src, tgt) keys, then each run's largest
  # weight: a third of lexsort's passes.
  keys = _packed(edges.src, edges.tgt)
  order = np.argsort(keys, kind='stable')
  keys = keys[order]
  starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
  return take(edges, order[starts])._replace(
      weight=np.maximum.reduceat(edges.weight[order], starts))


def merge_edges(parts, max_neighbors, dedupe):
  """Parts as one edge list, sorted, top-k per source; with `dedupe`,
  each (src, tgt) once, with its largest weight."""
  edges = concat_edges(list(parts))
  if dedupe:
    edges = dedupe_max(edges)
  return top_k_per_source(edges, max_neighbors)


def chunk_rows(num_corpus, max_entries=MAX_CHUNK_ENTRIES):
  return max(1, min(num_corpus, max_entries // max(1, num_corpus)))


def _chunk_products(queries, columns, max_entries):
  """(first row, chunk of queries, chunk @ columns.T) per chunk, every
  product in one buffer, so each chunk's scores are overwritten by the
  next: a fresh 128 MB array a chunk costs its page faults, about a tenth
  of the product's time."""
  step = chunk_rows(len(columns), max_entries)
  buffer = np.empty((min(step, len(queries)), len(columns)),
                    np.result_type(queries, columns))
  for start in range(0, len(queries), step):
    chunk = queries[start:start + step]
    scores = buffer[:len(chunk)]
    np.matmul(chunk, columns.T, out=scores)
    yield start, chunk, scores


def cross_edges(query_ids, queries, col_ids, columns, max_neighbors,
                threshold, col_names=None, max_entries=MAX_CHUNK_ENTRIES,
                unit=True):
  """Edges from the `queries` (node indices `query_ids`) to their neighbors
  among `columns` (node indices `col_ids`, sorted): one matrix product per
  chunk of queries; memory is the columns plus one chunk of scores."""
  parts = []
  for start, chunk, scores in _chunk_products(queries, columns, max_entries):
    parts.append(select_neighbors(scores,
                                  query_ids[start:start + len(chunk)], col_ids,
                                  max_neighbors, threshold, col_names,
                                  (chunk, columns), unit))
  return concat_edges(parts)


def exact_edges(query_ids, corpus, max_neighbors, threshold,
                max_entries=MAX_CHUNK_ENTRIES, unit=True):
  """Edges from the corpus rows `query_ids` to their neighbors in `corpus`."""
  return cross_edges(query_ids, corpus[query_ids], np.arange(len(corpus)),
                     corpus, max_neighbors, threshold,
                     max_entries=max_entries, unit=unit)


def pair_edges(start, end, corpus, threshold, max_entries=MAX_CHUNK_ENTRIES,
               offset=0, names=None, unit=True):
  """Every pair {i, j} with i in [start, end), j > i and similarity >=
  threshold, as both directed edges: NSL's semantics (all neighbors above
  the threshold, no top-k), each pair scored once, as NSL scores it. Half
  the products of `exact_edges`, and the edges come out symmetric, so no
  reverse-edge pass is needed. `corpus` row r is node `offset + r`, named
  names[r] (None: no ids)."""
  parts = []
  step = chunk_rows(len(corpus) - start, max_entries)
  for a in range(start, end, step):
    b = min(end, a + step)
    scores = corpus[a:b] @ corpus[a:].T
    # Column c is node a + c; keep c > row (j > i).
    scores[:, :b - a][np.tri(b - a, dtype=bool)] = -np.inf
    rows, cols = _sparse_nonzero(scores >= lowered(threshold))
    rows, cols, weights, _ = _reaching(
        rows, cols, scores[rows, cols].astype(np.float32), threshold,
        (corpus[a:b], corpus[a:]), unit)
    src, tgt = rows + a, cols + a
    parts.append(Edges(np.r_[src, tgt] + offset, np.r_[tgt, src] + offset,
                       np.r_[weights, weights],
                       None if names is None else names[np.r_[tgt, src]]))
  return concat_edges(parts)


def cross_pair_edges(query_ids, queries, query_names, col_ids, columns,
                     col_names, threshold, max_entries=MAX_CHUNK_ENTRIES,
                     unit=True):
  """pair_edges between two disjoint node sets: every pair (query, column)
  with similarity >= threshold, as both directed edges, each scored once."""
  parts = []
  for a, chunk, scores in _chunk_products(queries, columns, max_entries):
    rows, cols = _sparse_nonzero(scores >= lowered(threshold))
    rows, cols, weights, _ = _reaching(
        rows, cols, scores[rows, cols].astype(np.float32), threshold,
        (chunk, columns), unit)
    src, tgt = query_ids[a + rows], col_ids[cols]
    parts.append(Edges(np.r_[src, tgt].astype(np.int64),
                       np.r_[tgt, src].astype(np.int64),
                       np.r_[weights, weights],
                       np.r_[col_names[cols], query_names[a + rows]]))
  return concat_edges(parts)


def lsh_codes(vectors, num_splits, seed):
  """Random-hyperplane LSH codes of `vectors` for one round (seed), and
  their projections on one more random direction, which orders the members
  of a bucket too large to score whole."""
  rng = np.random.RandomState(seed)
  planes = rng.standard_normal((num_splits, vectors.shape[1])).astype(
      np.float32)
  bits = (vectors @ planes.T) >= 0
  codes = bits.astype(np.int64) @ (1 << np.arange(num_splits, dtype=np.int64))
  direction = rng.standard_normal(vectors.shape[1]).astype(np.float32)
  return codes, vectors @ direction


def bucket_pieces(codes, projections, ids, max_bucket_size):
  """Buckets of rows sharing a code, as positions into the arrays, ascending
  by node index `ids` within a bucket. A bucket larger than
  `max_bucket_size` is cut into consecutive pieces by projection, so the cost
  of one bucket stays bounded while near points still tend to stay
  together. Singletons are dropped (they have no pair)."""
  order = np.lexsort((ids, projections, codes))
  sorted_codes = codes[order]
  bounds = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1],
                                True])
  pieces = []
  for start, end in zip(bounds[:-1], bounds[1:]):
    for piece in range(start, end, max_bucket_size):
      members = order[piece:min(end, piece + max_bucket_size)]
      if len(members) > 1:
        pieces.append(members[np.argsort(ids[members], kind='stable')])
  return pieces


def lsh_buckets(corpus, num_splits, seed, max_bucket_size):
  """The buckets of one LSH round over a whole corpus: lists of indices."""
  codes, projections = lsh_codes(corpus, num_splits, seed)
  return bucket_pieces(codes, projections, np.arange(len(corpus)),
                       max_bucket_size)


def bucket_edges(ids, vectors, max_neighbors, threshold, names=None,
                 unit=True):
  """All-pairs edges inside one LSH bucket (node indices `ids`, sorted), as
  one matrix product."""
  return select_neighbors(vectors @ vectors.T, ids, ids, max_neighbors,
                          threshold, names, (vectors, vectors), unit)


# Spherical k-means of partition mode: phases of (sample points per
# centroid, Lloyd iterations), each phase's sample inside the next one's,
# so the cheap early steps on a small sample warm-start the full one. On
# bench_graph's 1M x 64 data (size 500; `--only kmeans`, 4 seeds) this
# schedule took 3.1 s where 10 steps on the full sample took 4.9 s, for a
# recall@10 at 3 probes of 0.971 against 0.969 (the seeds spread 0.006).
# 100 points instead of 40 raised the recall of 8 probes from 0.973 to
# 0.987 at 1M and from 0.935 to 0.950 at 10M (docs/benchmarks.md, section
# e); the steps are distributed, so the sample is bounded by disk, not by a
# worker's memory.
KMEANS_SCHEDULE = ((12, 6), (25, 4), (50, 3), (100, 3))
KMEANS_POINTS_PER_CENTROID = KMEANS_SCHEDULE[-1][0]


def kmeans_phases(hashes, num_partitions, num_nodes,
                  schedule=KMEANS_SCHEDULE):
  """Per node (a uint32 hash of it), the first phase of `schedule` whose
  sample holds it: a node is in a phase's sample where its hash is below
  that phase's sampling rate; len(schedule): in none."""
  bounds = [min(1.0, points * num_partitions / max(num_nodes, 1)) * 2.0**32
            for points, _ in schedule]
  return np.searchsorted(bounds, hashes, side='right').astype(np.uint8)


def unit_rows(rows):
  return rows / np.maximum(np.linalg.norm(rows, axis=1), 1e-30)[:, None]


# Lloyd sums are kept in fixed point (units of 2**-32; unit rows, so a
# centroid's sum stays exact below 2**31 rows): integer addition does not
# depend on the order in which runners add the parts, so every runner gets
# the same centroids.
_SUM_SCALE = 2.0**32


def lloyd_sums(sample, centroids, max_entries=MAX_CHUNK_ENTRIES):
  """One spherical k-means (Lloyd) step over part of the sample: the sum
  of the unit rows nearest to each centroid, int64 in fixed point (parts
  add up exactly, in any order)."""
  sums = np.zeros(centroids.shape, np.int64)
  step = chunk_rows(len(centroids), max_entries)
  for start in range(0, len(sample), step):
    rows = unit_rows(sample[start:start + step])
    np.add.at(sums, np.argmax(rows @ centroids.T, axis=1),
              np.rint(rows * _SUM_SCALE).astype(np.int64))
  return sums


def lloyd_update(centroids, sums):
  """The step's new unit centroids; a centroid that no row chose stays."""
  sums = sums / _SUM_SCALE
  norms = np.linalg.norm(sums, axis=1)
  filled = norms > 0
  updated = centroids.astype(np.float64)
  updated[filled] = sums[filled] / norms[filled, None]
  return updated.astype(np.float32)


def partition_centroids(corpus, num_partitions, seed,
                        schedule=KMEANS_SCHEDULE):
  """Unit centroids of `num_partitions` regions in one process: spherical
  k-means, the Lloyd steps of `schedule` on samples of the corpus, started
  at random points (the component runs the same steps distributed,
  scoring.py)."""
  rng = np.random.RandomState(seed)
  num_partitions = max(1, min(num_partitions, len(corpus)))
  phases = kmeans_phases(rng.randint(0, 2**32, len(corpus), np.uint64),
                         num_partitions, len(corpus), schedule)
  keep = phases < len(schedule)
  sample, phases = corpus[keep], phases[keep]
  centroids = unit_rows(sample[rng.choice(len(sample), num_partitions,
                                          replace=False)]).astype(np.float32)
  for phase, (_, iterations) in enumerate(schedule):
    rows = sample[phases <= phase]  # once a phase, not a step
    for _ in range(iterations):
      centroids = lloyd_update(centroids, lloyd_sums(rows, centroids))
  return centroids


def nearest_partitions(corpus, centroids, probes,
                       max_entries=MAX_CHUNK_ENTRIES):
  """[N, probes] indices of each row's nearest centroids, nearest first
  (ties: lower index). `probes` argmax passes: the product dominates (12
  passes over 20,000 centroids took 1.1x the time of 8; an argpartition
  of each row took 6x)."""
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


def recall_by_probes(exact, query_ids, query_probes, target_homes):
  """The recall@k that 1..P probes give the queries: ([P] recall, [P] its
  standard error over queries). Recall is the share of the queries' exact
  edges whose target's nearest partition (`target_homes`, one per edge) is
  among the source's first p probes ([len(query_ids), P], query_ids
  sorted); exact for these queries, as partition mode scores every member
  of a probed partition. The error is the ratio estimator's, the queries
  being the sampled units (their edges are not independent)."""
  width = query_probes.shape[1]
  if not len(exact.src):
    return np.ones(width), np.zeros(width)
  rows = np.searchsorted(query_ids, exact.src)
  hits = query_probes[rows] == target_homes[:, None]
  first = np.where(hits.any(axis=1), hits.argmax(axis=1), width)
  # [queries, P + 1] edges first found at each probe count, then summed up.
  found = np.zeros((len(query_ids), width + 1))
  np.add.at(found, (rows, first), 1)
  found = np.cumsum(found, axis=1)[:, :width]
  edges = np.bincount(rows, minlength=len(query_ids)).astype(np.float64)
  recall = found.sum(axis=0) / edges.sum()
  queries = max(len(query_ids), 2)
  residuals = found - recall[None, :] * edges[:, None]
  error = np.sqrt((residuals**2).sum(axis=0) / (queries - 1) / queries) / (
      edges.mean())
  # At least the error of independent edges at a pseudo-count recall: a
  # sample where every edge is found still leaves a margin.
  smoothed = (found.sum(axis=0) + 1) / (edges.sum() + 2)
  return recall, np.maximum(error, np.sqrt(smoothed * (1 - smoothed) /
                                           edges.sum()))


# One-sided 95% normal quantile: probes=None asks the calibration recall's
# lower bound, not its estimate, to reach the target.
LOWER_BOUND_Z = 1.645


def fewest_probes(recall, error, target):
  """The fewest probes whose recall's lower bound (recall_by_probes) reaches
  `target`; all of them if none does."""
  reached = np.flatnonzero(recall - LOWER_BOUND_Z * error >= target)
  return int(reached[0]) + 1 if len(reached) else len(recall)


# Partitions whose nodes form one unit of work: neighbouring partitions
# probe mostly the same partitions, so grouping them makes each per-partition
# matrix product taller (small products are dominated by call overheads).
PARTITIONS_PER_GROUP = 8


def partition_groups(centroids, seed=0):
  """The group of each partition: groups of about PARTITIONS_PER_GROUP
  neighbouring partitions (k-means on the centroids)."""
  num_groups = max(1, len(centroids) // PARTITIONS_PER_GROUP)
  return np.argmax(centroids @ partition_centroids(
      centroids, num_groups, seed).T, axis=1).astype(np.int32)


def block_edges(query_ids, queries, query_probes, members, max_neighbors,
                threshold, threads=1, unit=True):
  """Edges from each query to its neighbors among the members of the
  partitions its probes name (-1: none). Returns (edges, pairs scored).

  Args:
    query_ids, queries, query_probes: the queries' node indices, vectors and
      [len(queries), probes] partitions.
    members: partition -> (node indices, sorted; vectors; ids or None) of
      its members.

  Scored by faiss: an inverted-file index over the probed partitions'
  members, searched with the given probes (search_preassigned), the
  queries split over `threads` OpenMP threads. It scans a partition's
  members for each query that probes it; the former matrix product per
  partition was about 3x slower on one core (many small products;
  docs/benchmarks.md). Ties at the k-th place keep the member found first
  (probe order, then index), the same on every runner; the result does not
  depend on `threads`. Scores near the threshold are decided in float64
  (reach_threshold).
  """
  import faiss  # pylint: disable=g-import-not-at-top  # scoring workers only
  from faiss.contrib import ivf_tools  # pylint: disable=g-import-not-at-top
  partitions = np.unique(query_probes[query_probes >= 0])
  lists = [members(p) for p in partitions]
  sizes = np.array([len(ids) for ids, _, _ in lists] + [0], np.int64)
  # Probes as list numbers; -1 (and a partition without members) scans
  # nothing.
  probes = np.where(query_probes >= 0,
                    np.searchsorted(partitions, query_probes), len(lists))
  pairs = int(sizes[probes].sum())
  probes = np.where(sizes[probes] > 0, probes, -1).astype(np.int64)
  if not pairs:
    return empty_edges(), 0
  col_ids, columns, names = (
      None if parts[0] is None else np.concatenate(parts)
      for parts in zip(*(found for found in lists if len(found[0]))))
  dim = queries.shape[1]
  quantizer = faiss.IndexFlatIP(dim)  # unused: the probes are given
  # faiss scans at most nlist probes a query: empty lists make up the rest.
  index = faiss.IndexIVFFlat(quantizer, dim,
                             max(len(lists), probes.shape[1]),
                             faiss.METRIC_INNER_PRODUCT)
  index.is_trained = True
  ivf_tools.add_preassigned(
      index, np.ascontiguousarray(columns, np.float32),
      np.repeat(np.arange(len(lists), dtype=np.int64), sizes[:-1]))
  index.nprobe = probes.shape[1]
  # Queries split over the threads, each query on one thread, so the
  # result does not depend on them. omp_set_num_threads holds for this
  # thread.
  faiss.omp_set_num_threads(threads)
  queries = np.ascontiguousarray(queries, np.float32)

  def reaching(rows, weights, found):
    """(rows, weights, found) of the results that are members other than
    the query itself and reach the threshold; and the rows that lost a
    result within the slack to the float64 decision."""
    keep = found >= 0
    keep[keep] = col_ids[found[keep]] != query_ids[rows[keep]]
    rows, found, weights, lost = _reaching(
        rows[keep], found[keep], weights[keep], threshold, (queries, columns),
        unit)
    return rows, weights, found, lost

  def within(positions):
    """Every probed member of the queries at `positions` that reaches the
    lowered threshold (the next float down keeps those equal to it)."""
    index.parallel_mode = 0  # range search splits by query in mode 0
    radius = float(np.nextafter(np.float32(lowered(threshold)),
                                np.float32(-np.inf)))
    lims, weights, found = ivf_tools.range_search_preassigned(
        index, queries[positions], radius, probes[positions])
    return reaching(positions[np.repeat(np.arange(len(positions)), np.diff(
        lims.astype(np.int64)))], weights, found)

  if max_neighbors is None:
    rows, weights, found, _ = within(np.arange(len(query_ids)))
  else:
    # faiss's default mode would not split search_preassigned over threads
    # (its range search does, in it, and fails in this one).
    index.parallel_mode = 3
    # One more: a query may find itself.
    weights, found = ivf_tools.search_preassigned(
        index, queries, max_neighbors + 1, probes)
    rows, weights, found, short = reaching(
        np.repeat(np.arange(len(query_ids)), found.shape[1]),
        weights.ravel(), found.ravel())
    if len(short):
      # A result dropped in float64 may have kept out one within the slack
      # that reaches the threshold: those queries take every member that
      # reaches the lowered threshold, and the top-k below keeps k.
      kept = ~np.isin(rows, short)
      more = within(short)
      rows, weights, found = (np.r_[a[kept], b] for a, b in zip(
          (rows, weights, found), more[:3]))
  edges = Edges(query_ids[rows], col_ids[found],
                weights.astype(np.float32),
                None if names is None else names[found])
  return top_k_per_source(edges, max_neighbors), pairs


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
# no process needs the edge list for them. degree_counts: {out-degree >= 1:
# sources with it}; forest: (roots, members), a spanning forest of the
# shard's edges, one (root, member) pair per non-root node on an edge.
StatsPart = collections.namedtuple('StatsPart',
                                   ['num_edges', 'degree_counts', 'forest'])
_NO_FOREST = (np.zeros(0, np.int64), np.zeros(0, np.int64))
# Bytes a node that the connected components take in one process: int32
# labels, a flag, the labels of the nodes on edges and bincount's int64
# copies (21 bytes measured at 10M nodes, docs/benchmarks.md).
COMPONENT_BYTES_PER_NODE = 24


def _dense_span(values):
  """The lowest value where non-negative integer `values` span at most a
  few times their count (node indices of a shard's edges), else None."""
  if not len(values):
    return None
  low, high = int(values.min()), int(values.max())
  return low if low >= 0 and high - low < 8 * len(values) else None


def unique_inverse(values):
  """np.unique(values, return_inverse=True) for non-negative integers, by
  a mask over their span where it is dense."""
  low = _dense_span(values)
  if low is None:
    unique, inverse = np.unique(values, return_inverse=True)
    return unique.astype(np.int64), inverse
  seen = np.zeros(int(values.max()) - low + 1, bool)
  seen[values - low] = True
  unique = np.flatnonzero(seen)
  # int32 ranks (the span is under 8 x 2**31 only where the values are
  # that many): 4 bytes a span slot, not int64's 8.
  rank = np.cumsum(seen, dtype=np.int32 if len(seen) < 2**31 else np.int64)
  return unique + low, rank[values - low] - 1


def value_counts(values):
  """np.unique(values, return_counts=True)[1], by bincount where dense."""
  low = _dense_span(values)
  if low is None:
    return np.unique(values, return_counts=True)[1]
  counts = np.bincount(values - low)
  return counts[counts > 0]


def spanning_forest(src, tgt):
  """A star per weakly connected component of the edges src -> tgt: (roots,
  members), the root being the component's smallest node."""
  from scipy.sparse import coo_matrix  # pylint: disable=g-import-not-at-top
  from scipy.sparse.csgraph import connected_components  # pylint: disable=g-import-not-at-top
  nodes, ends = unique_inverse(np.r_[src, tgt])
  if not len(nodes):
    return _NO_FOREST
  adjacency = coo_matrix((np.ones(len(src), np.int8),
                          (ends[:len(src)], ends[len(src):])),
                         shape=(len(nodes),) * 2)
  _, labels = connected_components(adjacency, directed=True,
                                   connection='weak')
  # nodes ascend, so each label's first position holds its smallest node.
  _, first = np.unique(labels, return_index=True)
  not_root = np.ones(len(nodes), bool)
  not_root[first] = False
  return nodes[first][labels[not_root]], nodes[not_root]


def stats_part(edges):
  """The statistics of one set of sources' edges (all edges of each)."""
  if not len(edges.src):
    return StatsPart(0, {}, _NO_FOREST)
  histogram = np.bincount(value_counts(edges.src))
  return StatsPart(len(edges.src),
                   {d: int(c) for d, c in enumerate(histogram) if d and c},
                   spanning_forest(edges.src, edges.tgt))


def _roots(parent, nodes):
  """The root of each node (parent[root] == root), compressing their paths."""
  found = nodes
  while True:
    up = parent[found]
    if (up == found).all():
      parent[nodes] = found
      return found
    found = up


def component_stats(num_nodes, forests):
  """Isolated nodes and weakly connected components of the union of
  spanning forests, streamed one forest at a time: a union-find over
  num_nodes int32 labels (COMPONENT_BYTES_PER_NODE a node), whatever the
  number of forests and edges."""
  parent = np.arange(num_nodes,
                     dtype=np.int32 if num_nodes < 2**31 else np.int64)
  touched = np.zeros(num_nodes, bool)
  for roots, members in forests:
    touched[roots] = touched[members] = True
    # The forest joins the components of its pairs' ends: link their roots
    # (each to the smallest, so parent[x] <= x: no cycles).
    joined, linked = spanning_forest(_roots(parent, roots),
                                     _roots(parent, members))
    parent[linked] = joined
  while True:  # Pointer jumping: every node to its root.
    jumped = parent[parent]
    if (jumped == parent).all():
      break
    parent = jumped
  labels = parent[touched]
  sizes = np.bincount(labels)
  sizes = sizes[sizes > 0]
  return {'isolated_nodes': int(num_nodes - len(labels)),
          'connected_components': int(num_nodes - len(labels) + len(sizes)),
          'largest_component': int(sizes.max()) if len(sizes) else int(
              num_nodes > 0)}


def merge_stats_parts(parts):
  """The parts' counts as one part (no forest: component_stats takes them)."""
  num_edges, counts = 0, collections.Counter()
  for part in parts:
    num_edges += part.num_edges
    counts.update(part.degree_counts)
  return StatsPart(num_edges, dict(counts), None)


def final_stats(num_nodes, part, forests):
  """Nodes, edges, out-degree histogram and, given the parts' `forests`
  (None: left out), isolated nodes and weakly connected components."""
  histogram = dict(part.degree_counts)
  without = num_nodes - sum(histogram.values())
  if without:
    histogram[0] = without
  stats = {
      'num_nodes': int(num_nodes),
      'num_edges': int(part.num_edges),
      'out_degree_histogram': {str(d): histogram[d] for d in sorted(histogram)},
      'max_out_degree': max(histogram) if histogram else 0,
      'mean_out_degree': part.num_edges / num_nodes if num_nodes else 0.0,
  }
  if forests is None:
    stats.update(isolated_nodes=None, connected_components=None)
  else:
    stats.update(component_stats(num_nodes, forests))
  return stats


def graph_stats(num_nodes, edges):
  """final_stats of one edge list."""
  part = stats_part(edges)
  return final_stats(num_nodes, part, [part.forest])
