"""GraphBuilder's scoring steps, per mode, and the recall estimate: Beam
functions over the stored node shards (corpus.py) and graph_core's kernels.

Every step reads the nodes it needs from shard or group files through a
bounded per-process cache; rows into a GroupByKey travel as stored Runs
(corpus.store_runs), and edges in elements of at most corpus.ELEMENT_BYTES,
keyed for the top-k merge.
"""
import collections

from absl import logging
import apache_beam as beam
import numpy as np

from tfx_nsl.components.graph_builder import corpus
from tfx_nsl.components.graph_builder import graph_core
from tfx_nsl.components.graph_builder.params import COUNTERS
from tfx_nsl.components.graph_builder.params import NAMESPACE
from tfx_nsl.components.graph_builder.params import PARTITION


def counter(name):
  assert name in COUNTERS or name.startswith('examples_read_'), name
  return beam.metrics.Metrics.counter(NAMESPACE, name)


# Queries of one partition-mode product batch.
_MAX_BLOCK_QUERIES = 8192
# Candidate edges a top-k merge buffers before it cuts them down.
_MIN_COMPACT_EDGES = 1 << 20
GroupFile = collections.namedtuple('GroupFile', ['group', 'path'])
# The k-means model of partition mode: centroids and the group of each.
PartitionModel = collections.namedtuple('PartitionModel',
                                        ['centroids', 'group_of'])
# A stored part of the k-means sample and the number of partitions wanted.
SampleFile = collections.namedtuple('SampleFile', ['path', 'num_partitions'])
# Partition mode's probes a node and, when calibrated (probes=None), the
# recall@k they gave the calibration sample (else None).
Probes = collections.namedtuple('Probes', ['probes', 'calibrated_recall'])


def cache_bytes(params):
  """Bytes of shard and group files a worker keeps loaded."""
  return params.memory_budget_bytes // 2


def _edge_bytes(edges):
  return 20 + (0 if edges.tgt_id is None else edges.tgt_id.itemsize)


def by_shard(edges, layout):
  """(source shard, edges), in elements of at most corpus.ELEMENT_BYTES."""
  for shard, rows in corpus.runs(layout.shard_of(edges.src),
                                 _edge_bytes(edges)):
    yield int(shard), graph_core.take(edges, rows)


def _block_sources(layout, params):
  """Sources of one top-k merge, the same for every step of a run: their
  top-k fits in one element."""
  if params.max_neighbors is None:
    return None
  return max(1, corpus.ELEMENT_BYTES // (
      2 * (20 + layout.id_bytes) * params.max_neighbors))


def _candidates(edges, layout, params):
  """Scored edges keyed for the merge: by (source shard, block of
  _block_sources sources) for a top-k, whose merged accumulators then stay
  one small element each; by (source shard, 0) without one."""
  block = _block_sources(layout, params)
  for shard, part in by_shard(edges, layout):
    if block is None:
      yield (shard, 0), part
      continue
    for b, rows in corpus.runs(part.src // block, _edge_bytes(part)):
      yield (shard, int(b)), graph_core.take(part, rows)


def shards_of(layout):
  return [s for s, f in enumerate(layout.files) if f is not None]


def exact_units(layout, params):
  """(query shard, first row, end row, corpus shard): each ordered pair of
  shards (each unordered one, with its diagonal, without a top-k)."""
  every_pair = params.max_neighbors is None
  block = params.mode.block_size
  for i in shards_of(layout):
    count = int(layout.offsets[i + 1] - layout.offsets[i])
    for start in range(0, count, block):
      for j in shards_of(layout):
        if j >= i or not every_pair:
          yield i, start, min(count, start + block), j


class ScoreExact(beam.DoFn):
  """Exact: a block of one shard's rows against one shard."""

  def __init__(self, params):
    self._params = params

  def process(self, unit, layout):
    params, capacity = self._params, cache_bytes(self._params)
    i, start, end, j = unit
    rows = slice(start, end)
    query_ids, query_names, queries = layout.nodes(i, capacity)
    col_ids, col_names, columns = layout.nodes(j, capacity)
    if params.max_neighbors is not None:
      edges = graph_core.cross_edges(
          query_ids[rows], queries[rows], col_ids, columns,
          params.max_neighbors, params.similarity_threshold, col_names,
          unit=params.unit_vectors)
      pairs = (end - start) * len(col_ids)
    elif i == j:
      edges = graph_core.pair_edges(start, end, queries,
                                    params.similarity_threshold,
                                    offset=query_ids[0], names=query_names,
                                    unit=params.unit_vectors)
      num = len(query_ids)
      pairs = (end - start) * (num - 1) - (start + end - 1) * (end - start) // 2
    else:
      edges = graph_core.cross_pair_edges(
          query_ids[rows], queries[rows], query_names[rows], col_ids, columns,
          col_names, params.similarity_threshold, unit=params.unit_vectors)
      pairs = (end - start) * len(col_ids)
    counter('scored_pairs').inc(pairs)
    yield from _candidates(edges, layout, params)


class LshCodes(beam.DoFn):
  """LSH: one shard's rows as stored Runs, keyed by (round, bucket code)."""

  def __init__(self, params, directory):
    self._params = params
    self._directory = directory

  def process(self, shard, layout):
    mode = self._params.mode
    ids, names, vectors = layout.nodes(shard, cache_bytes(self._params))
    for round_index in range(mode.rounds):
      codes, projections = graph_core.lsh_codes(vectors, mode.splits,
                                                mode.seed + round_index)
      for code, run in corpus.store_runs(
          self._directory, f'lsh{shard}', codes, ids=ids, names=names,
          vectors=vectors, projections=projections):
        yield (round_index, int(code)), run


def score_bucket(keyed, layout, params):
  """LSH: the pieces of one bucket, one matrix product each."""
  _, bucket_runs = keyed
  rows = corpus.load_runs(bucket_runs)
  ids, names, vectors, projections = (
      rows[k] for k in ('ids', 'names', 'vectors', 'projections'))
  pieces = graph_core.bucket_pieces(np.zeros(len(ids), np.int64), projections,
                                    ids, params.mode.max_bucket_size)
  counter('lsh_buckets').inc(len(pieces))
  counter('scored_pairs').inc(sum(len(p) ** 2 for p in pieces))
  edges = graph_core.concat_edges([
      graph_core.bucket_edges(ids[p], vectors[p], params.max_neighbors,
                              params.similarity_threshold, names[p],
                              params.unit_vectors)
      for p in pieces])
  yield from _candidates(edges, layout, params)


def _num_partitions(layout, params):
  return max(1, layout.num_nodes // params.mode.size)


def kmeans_sample(shard, layout, directory, params):
  """One shard's part of the k-means sample, stored as a file: rows whose
  seeded id hash falls below the sampling rate, so the sample does not
  depend on the sharding (nor does `start`, the other hash that picks the
  starting centroids)."""
  ids, names, vectors = layout.nodes(shard, cache_bytes(params))
  phases = graph_core.kmeans_phases(corpus.id_hash(names, params.mode.seed),
                                    _num_partitions(layout, params),
                                    layout.num_nodes)
  keep = phases < len(graph_core.KMEANS_SCHEDULE)
  return SampleFile(corpus.store_arrays(
      directory, f'sample{shard}', ids=ids[keep], vectors=vectors[keep],
      phases=phases[keep], start=corpus.id_hash(
          np.char.add(b'start:', names[keep]), params.mode.seed)),
                    _num_partitions(layout, params))


def initial_centroids(samples):
  """The unit rows of the smallest `start` hashes (ties: node index), one
  per partition, over all sample files: read a file at a time, holding the
  chosen rows only."""
  if not samples:  # No nodes: nothing to partition.
    return None
  count = samples[0].num_partitions
  start, ids, vectors = (np.zeros(0, np.uint32), np.zeros(0, np.int64),
                         None)
  for sample in sorted(samples):
    stored = corpus.load_arrays(sample.path)
    start, ids = (np.r_[start, stored['start']], np.r_[ids, stored['ids']])
    vectors = stored['vectors'] if vectors is None else np.concatenate(
        [vectors, stored['vectors']])
    order = np.lexsort((ids, start))[:count]
    start, ids, vectors = start[order], ids[order], vectors[order]
  return graph_core.unit_rows(vectors).astype(np.float32)


class LloydSums(beam.DoFn):
  """A Lloyd step's sums over a bundle's sample files (the rows of `phase`'s
  sample), stored as one file (its path): a partitions x d array would pass
  the size that a Flink sort buffer takes as one record (10 MB at 20,000 x
  64 failed)."""

  def __init__(self, directory, phase):
    self._directory = directory
    self._phase = phase

  def start_bundle(self):
    self._sums = None

  def process(self, sample, centroids):
    stored = corpus.load_arrays(sample.path)
    sums = graph_core.lloyd_sums(
        stored['vectors'][stored['phases'] <= self._phase], centroids)
    self._sums = sums if self._sums is None else self._sums + sums

  def finish_bundle(self):
    if self._sums is not None:
      yield beam.utils.windowed_value.WindowedValue(
          corpus.store_arrays(self._directory, 'lloyd', sums=self._sums), 0,
          [beam.transforms.window.GlobalWindow()])


def lloyd_update(paths, centroids):
  """The step's centroids from its stored sums (exact integers: the
  order of the files does not matter)."""
  if centroids is None:  # No nodes.
    return None
  sums = np.zeros(centroids.shape, np.int64)
  for path in paths:
    sums += corpus.load_arrays(path)['sums']
  return graph_core.lloyd_update(centroids, sums)


def partition_model(centroids, params):
  if centroids is None:  # No nodes.
    return None
  counter('partitions').inc(len(centroids))
  return PartitionModel(centroids, graph_core.partition_groups(
      centroids, params.mode.seed))


class Assign(beam.DoFn):
  """Partition: one shard's rows with their probes as stored Runs, keyed by
  the group of their nearest partition."""

  def __init__(self, params, directory):
    self._params = params
    self._directory = directory

  def process(self, shard, layout, model, probes):
    ids, names, vectors = layout.nodes(shard, cache_bytes(self._params))
    probes = graph_core.nearest_partitions(vectors, model.centroids,
                                           probes.probes)
    for group, run in corpus.store_runs(
        self._directory, f'assigned{shard}', model.group_of[probes[:, 0]],
        ids=ids, names=names, vectors=vectors, probes=probes):
      yield int(group), run


def store_group(keyed, directory):
  """One group's nodes, stored by (nearest partition, index): the members
  of partition partitions[i] are rows bounds[i]:bounds[i + 1]."""
  group, group_runs = keyed
  rows = corpus.load_runs(group_runs)
  ids, names, vectors, probes = (
      rows[k] for k in ('ids', 'names', 'vectors', 'probes'))
  order = np.lexsort((ids, probes[:, 0]))
  partitions, bounds = np.unique(probes[order, 0], return_index=True)
  return GroupFile(group, corpus.store_arrays(
      directory, f'group{group}', ids=ids[order], names=names[order],
      vectors=vectors[order], probes=probes[order], partitions=partitions,
      bounds=np.r_[bounds, len(ids)]))


def _members(stored):
  """partition -> (node indices, vectors, ids) of a stored group."""
  bounds = stored['bounds']
  return {partition: (stored['ids'][bounds[i]:bounds[i + 1]],
                      stored['vectors'][bounds[i]:bounds[i + 1]],
                      stored['names'][bounds[i]:bounds[i + 1]])
          for i, partition in enumerate(stored['partitions'].tolist())}


def in_group(probes, group_of, group):
  """`probes` with the partitions outside `group` replaced by -1 (no
  partition: block_edges scores nothing for it)."""
  return np.where(group_of[probes] == group, probes, -1)


def score_members(query_ids, queries, probes, members, params, threads=1):
  """(edges, pairs): the queries against the members of the partitions
  their `probes` name, top-k per query."""
  empty = (np.zeros(0, np.int64), None, None)
  parts, pairs = [], 0
  for start in range(0, len(query_ids), _MAX_BLOCK_QUERIES):
    rows = slice(start, start + _MAX_BLOCK_QUERIES)
    edges, scored = graph_core.block_edges(
        query_ids[rows], queries[rows], probes[rows],
        lambda p: members.get(p, empty), params.max_neighbors,
        params.similarity_threshold, threads=threads,
        unit=params.unit_vectors)
    parts.append(edges)
    pairs += scored
  return graph_core.concat_edges(parts), pairs


def _positions(query_ids, nodes):
  """Where each of `nodes` is in `query_ids` (distinct, in any order)."""
  order = np.argsort(query_ids)
  return order[np.searchsorted(query_ids[order], nodes)]


def kth_weights(edges, query_ids, max_neighbors):
  """Per query, the weight of its k-th edge; -inf with fewer edges, or
  without a top-k. `edges`: sorted by source and weight, top-k per source,
  as block_edges returns them."""
  bounds = np.full(len(query_ids), -np.inf, np.float32)
  if max_neighbors is None or not len(edges.src):
    return bounds
  starts = np.flatnonzero(np.r_[True, edges.src[1:] != edges.src[:-1]])
  counts = np.diff(np.r_[starts, len(edges.src)])
  last = starts[counts == max_neighbors] + max_neighbors - 1
  bounds[_positions(query_ids, edges.src[last])] = edges.weight[last]
  return bounds


def at_least(edges, query_ids, bounds):
  """The edges whose weight reaches their source's bound (`bounds` beside
  `query_ids`): an edge under it cannot make the source's top-k. Returns
  (those edges, the positions of their sources in `query_ids`)."""
  positions = _positions(query_ids, edges.src)
  keep = edges.weight >= bounds[positions]
  return graph_core.take(edges, keep), positions[keep]


def edge_columns(edges):
  """An Edges' columns by name, for corpus.store_runs (None: left out)."""
  return {name: column for name, column in edges._asdict().items()
          if column is not None}


class ScoreHome(beam.DoFn):
  """Partition, first pass over one group: its nodes against the members of
  the partitions they probe inside the group (the nearest among them), as
  a stored Run keyed by the group; and, keyed by each other group they
  probe, the nodes that visit it with the weight their k-th edge so far
  has (a visit's edges under it cannot count). Probes spread over many
  groups in high dimensions, so each group's members are read once, by
  their own unit, and the nodes travel to them instead."""
  VISITS = 'visits'

  def __init__(self, params, directory, threads):
    self._params = params
    self._directory = directory
    self._threads = threads

  def process(self, group_file, layout, model):
    params, group = self._params, group_file.group
    own = corpus.CACHE.load(group_file.path, cache_bytes(params))
    ids, probes = own['ids'], own['probes']
    edges, pairs = score_members(ids, own['vectors'],
                                 in_group(probes, model.group_of, group),
                                 _members(own), params, self._threads)
    counter('scored_pairs').inc(pairs)
    for key, run in corpus.store_runs(
        self._directory, f'home{group}', np.full(len(edges.src), group),
        **edge_columns(edges)):
      yield key, run
    probed = model.group_of[probes]
    rows, others = np.nonzero(probed != group)
    visit = np.unique(rows * (len(model.centroids) + 1) + probed[rows, others])
    rows, others = np.divmod(visit, len(model.centroids) + 1)
    for key, run in corpus.store_runs(
        self._directory, f'visit{group}', others, ids=ids[rows],
        vectors=own['vectors'][rows], probes=probes[rows],
        bounds=kth_weights(edges, ids, params.max_neighbors)[rows]):
      yield beam.pvalue.TaggedOutput(self.VISITS, (key, run))


class ScoreVisits(beam.DoFn):
  """Partition, second pass over one group: the nodes that visit it against
  the members of the partitions they probe in it; the edges that reach a
  node's bound, as stored Runs keyed by the node's own group. A bundle's
  edges go into one file (one per _found_bytes at most): MergeFound reads
  a group's edges from each file that has some, and a file per batch of
  visits took it about 2 s a group at 10M nodes."""

  def __init__(self, params, directory, threads):
    self._params = params
    self._directory = directory
    self._threads = threads
    self._found = []

  def start_bundle(self):
    self._found = []

  def process(self, keyed, layout, model, group_files):
    params, (group, visit_runs) = self._params, keyed
    if group not in group_files:  # probed, but no node's nearest
      return
    members = _members(corpus.CACHE.load(group_files[group],
                                         cache_bytes(params)))
    for batch in corpus.run_batches(visit_runs, _MAX_BLOCK_QUERIES):
      visits = corpus.load_runs(batch)
      ids, probes = visits['ids'], visits['probes']
      edges, pairs = score_members(ids, visits['vectors'],
                                   in_group(probes, model.group_of, group),
                                   members, params, self._threads)
      counter('scored_pairs').inc(pairs)
      edges, sources = at_least(edges, ids, visits['bounds'])
      self._found.append((model.group_of[probes[sources, 0]], edges))
      if sum(len(e.src) * _edge_bytes(e)
             for _, e in self._found) > _found_bytes(params):
        yield from self._store()

  def finish_bundle(self):
    for found in self._store():
      yield beam.utils.windowed_value.WindowedValue(
          found, 0, [beam.transforms.window.GlobalWindow()])

  def _store(self):
    found, self._found = self._found, []
    if not found:
      return []
    edges = graph_core.concat_edges([e for _, e in found])
    return corpus.store_runs(self._directory, 'found',
                             np.concatenate([h for h, _ in found]),
                             **edge_columns(edges))


def _found_bytes(params):
  """Found edges a ScoreVisits worker buffers before it stores them."""
  return params.memory_budget_bytes // 8


def sample_of(edges, layout, params):
  """The edges from the recall sample's sources, without target ids; None
  if there are none."""
  mask = np.isin(edges.src, recall_sample(layout, params))
  return graph_core.Edges(*(a[mask] for a in edges[:3])) if mask.any() else None


def with_reverses(edges, source_names):
  """`edges` and their reverses; `source_names`: the id of each source."""
  return graph_core.concat_edges([edges, graph_core.Edges(
      edges.tgt, edges.src, edges.weight, source_names)])


def store_by_shard(edges, layout, directory):
  """(source shard, stored Run) for the edges: what the shard gather reads."""
  for shard, run in corpus.store_runs(directory, 'edges',
                                      layout.shard_of(edges.src),
                                      **edge_columns(edges)):
    yield int(shard), run


class MergeFound(beam.DoFn):
  """Partition: one group's edges from both passes, top-k per source (with
  their reverses if undirected), stored by source shard; what goes on is a
  Run per shard, and the recall sample's edges as a small tagged output.
  About 100M edges sent on as elements failed a Flink TaskManager's heap
  at 10M nodes."""
  SAMPLE = 'sample'

  def __init__(self, params, directory, reverse):
    self._params = params
    self._directory = directory
    self._reverse = reverse

  def process(self, keyed, layout, group_files):
    params, (group, edge_runs) = self._params, keyed
    edges = graph_core.top_k_per_source(
        graph_core.Edges(**corpus.load_runs(edge_runs)), params.max_neighbors)
    sample = sample_of(edges, layout, params)
    if sample is not None:
      yield beam.pvalue.TaggedOutput(self.SAMPLE, sample)
    if self._reverse:  # Every source is a node of the group.
      own = corpus.CACHE.load(group_files[group], cache_bytes(params))
      edges = with_reverses(edges, own['names'][_positions(own['ids'],
                                                           edges.src)])
    yield from store_by_shard(edges, layout, self._directory)


def recall_sample(layout, params):
  """The fixed node sample of the recall estimate, sorted; O(sample) memory
  (Generator.choice draws a small sample without permuting all nodes)."""
  size = min(params.mode.recall_sample_size, layout.num_nodes)
  return np.sort(np.random.default_rng(params.mode.seed).choice(
      layout.num_nodes, size, replace=False))


def calibrates(params):
  return params.mode.NAME == PARTITION and params.mode.probes is None


def calibration_sample(layout, params):
  """The nodes on which probes=None chooses the probes: none of them in
  the recall sample, so the recall estimate stays out of sample; the
  recall sample itself when it holds every node."""
  recall = recall_sample(layout, params)
  size = min(params.mode.recall_sample_size, layout.num_nodes - len(recall))
  if size <= 0:
    return recall
  drawn = np.random.default_rng([params.mode.seed, 1]).choice(
      layout.num_nodes, size + len(recall), replace=False)
  return np.sort(drawn[~np.isin(drawn, recall)][:size])


def query_nodes(layout, params):
  """The nodes whose exact top-k is computed: the recall sample and, when
  probes are calibrated, the calibration sample."""
  nodes = recall_sample(layout, params)
  if calibrates(params):
    nodes = np.union1d(nodes, calibration_sample(layout, params))
  return nodes


def sample_queries(shard, layout, params):
  """The query nodes in one shard: (indices, vectors)."""
  ids, _, vectors = layout.nodes(shard, cache_bytes(params))
  keep = np.isin(ids, query_nodes(layout, params))
  if keep.any():
    yield ids[keep], vectors[keep]


def exact_for_sample(shard, layout, queries, params):
  """The sample's exact neighbors among one shard's nodes."""
  ids, _, vectors = layout.nodes(shard, cache_bytes(params))
  sample_ids, sample_vectors = queries
  yield graph_core.cross_edges(sample_ids, sample_vectors, ids, vectors,
                               params.max_neighbors,
                               params.similarity_threshold,
                               unit=params.unit_vectors)


def _calibration_edges(exact, layout, params):
  return graph_core.take(exact, np.isin(exact.src,
                                        calibration_sample(layout, params)))


def neighbor_homes(shard, layout, exact, model, params):
  """The nearest partition of each of one shard's nodes that is an exact
  neighbor of the calibration sample: (node indices, partitions)."""
  ids, _, vectors = layout.nodes(shard, cache_bytes(params))
  keep = np.isin(ids, _calibration_edges(exact, layout, params).tgt)
  if keep.any():
    yield ids[keep], graph_core.nearest_partitions(
        vectors[keep], model.centroids, 1)[:, 0]


def calibrate(homes, queries, exact, model, layout, params):
  """Probes for probes=None: the fewest that give the calibration sample
  the target recall@k against its exact neighbors (at most max_probes)."""
  mode = params.mode
  if layout is None:  # No examples: nothing is scored.
    return Probes(1, None)
  # No homes only where the calibration sample has no exact edges.
  nodes, partitions = concat_by_node(homes)
  edges = _calibration_edges(exact, layout, params)
  query_ids, vectors = queries
  sample = np.isin(query_ids, calibration_sample(layout, params))
  recall, error = graph_core.recall_by_probes(
      edges, query_ids[sample],
      graph_core.nearest_partitions(vectors[sample], model.centroids,
                                    mode.max_probes),
      partitions[np.searchsorted(nodes, edges.tgt)] if len(edges.src)
      else None)
  probes = graph_core.fewest_probes(recall, error, mode.target_recall)
  chosen = float(recall[probes - 1])
  counter('probes').inc(probes)
  logging.info('GraphBuilder: %d probes of %d regions give the calibration '
               'sample recall@k %.4f +- %.4f (target %.4f; 1 probe: %.4f)',
               probes, len(model.centroids), chosen, error[probes - 1],
               mode.target_recall, recall[0])
  bound = chosen - graph_core.LOWER_BOUND_Z * error[probes - 1]
  if bound < mode.target_recall:
    logging.warning('GraphBuilder: %d probes (max_probes=%d, or every '
                    'region) reach recall@k %.4f +- %.4f, short of '
                    'target_recall=%.4f with 95%% confidence; raise '
                    'max_probes or recall_sample_size', probes,
                    mode.max_probes, chosen, error[probes - 1],
                    mode.target_recall)
  return Probes(probes, chosen)


def fixed_probes(model, params):
  """Probes as given (probes=...), at most one a region."""
  probes = params.mode.probes
  return Probes(probes if model is None else min(probes, len(
      model.centroids)), None)


class TopK(beam.CombineFn):
  """Edges -> their top-k per source (after a dedupe keeping each pair's
  largest weight, if asked). The accumulator is a list of parts, cut down
  to the top-k once it holds twice as many edges as its last cut and at
  least _MIN_COMPACT_EDGES (about 30 MB): merges stay linear in the edges
  however many units scored them. compact() cuts it, so what goes into the
  shuffle is the top-k alone."""

  def __init__(self, max_neighbors, dedupe=False):
    self._k = max_neighbors
    self._dedupe = dedupe

  def _cut(self, parts):
    return [graph_core.merge_edges(parts, self._k, self._dedupe)]

  def _maybe_cut(self, parts):
    sizes = [len(p.src) for p in parts]
    if len(parts) > 1 and sum(sizes) > max(_MIN_COMPACT_EDGES, 2 * sizes[0]):
      return self._cut(parts)
    return parts

  def create_accumulator(self):
    return []

  def add_input(self, accumulator, edges):
    return self._maybe_cut(accumulator + [edges])

  def merge_accumulators(self, accumulators):
    return self._maybe_cut([p for a in accumulators for p in a])

  def compact(self, accumulator):
    return self._cut(accumulator)

  def extract_output(self, accumulator):
    return self._cut(accumulator)[0]


def sample_edges(keyed, layout, params):
  """One shard's edges from the recall sample's sources."""
  sample = sample_of(keyed[1], layout, params)
  if sample is not None:
    yield sample


def sampled_recall(found_parts, exact, layout, params):
  """Recall of the approximate top-k against exact, on a fixed node sample."""
  if layout is None:  # No examples; _finish_stats reports it.
    return None
  return graph_core.recall_at_k(graph_core.concat_edges(found_parts), exact,
                                recall_sample(layout, params))


def concat_by_node(parts):
  """The shards' parts (node indices, values; in any order) as one
  (node indices, sorted; their values), values None without parts."""
  if not parts:
    return np.zeros(0, np.int64), None
  ids = np.concatenate([p[0] for p in parts])
  order = np.argsort(ids)
  return ids[order], np.concatenate([p[1] for p in parts])[order]
