"""GraphAugmentation executor: a Beam join of graph edges with examples.

Data flow (two shuffles, nothing collected on the driver):

  examples --parse once--> neighbor entries by target bucket, seeds by source
                           bucket (ids only for the other roles)
  edge files --one loop per file--> (target, source, weight) by target bucket
  GroupByKey(target bucket): merge duplicate edges (max weight), resolve each
      target to its neighbor example or count it as unknown / not a neighbor
      --> (source, weight, target, entries) by source bucket
  GroupByKey(source bucket): bounded top-k per source, merge the neighbors
      into each seed by appending serialized features --> one output per
      seed split.

Buckets are a stable hash of the node id (their number grows with the input
size) and every element crossing a shuffle is a pickled batch, which keeps
Beam's per-element cost off the examples and edges. The top-k holds at most
`max_neighbors` candidates per node, so a node with a huge out-degree costs
no more memory than any other.

On the DirectRunner, a batch waits for the next stage in a file of a local
temporary folder (removed after the run) and only its path is shuffled: the
in-memory runner holds about four copies of everything it shuffles
(measured: 56 MB of batches through one GroupByKey raised peak RSS by
250 MB), which would make the joins' memory several times the data. Other
runners shuffle the batches themselves.
"""
import collections
from concurrent import futures
import contextlib
import gc
import json
import math
import os
import pickle
import shutil
import struct
import tempfile
import uuid
import zlib
from typing import Dict, Optional, Tuple

from absl import logging
import apache_beam as beam
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
import crcmod.predefined
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from tfx_nsl import beam_executor
from tfx_nsl import graph_io
from tfx_nsl.components.graph_augmentation import augment_core
from tfx_nsl.components.graph_augmentation.config import AugmentParams

# Keys of the component spec (component.py re-exports them).
EXAMPLES_KEY = 'examples'
GRAPH_KEY = 'graph'
AUGMENTED_EXAMPLES_KEY = 'augmented_examples'

# Examples properties as TFX's examples_utils names them; that module imports
# every standard TFX component (about 150 MB and 2 s per worker), so this
# executor reads them itself (tests check against examples_utils).
PAYLOAD_FORMAT_PROPERTY = 'payload_format'
FILE_FORMAT_PROPERTY = 'file_format'
_TF_EXAMPLE = example_gen_pb2.PayloadFormat.Name(
    example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
# Custom property of the output Examples: JSON of the counters below.
STATS_PROPERTY = 'augmentation_stats'
METRICS_NAMESPACE = 'tfx_nsl.GraphAugmentation'
OUTPUT_FILE_PREFIX = 'data_tfrecord'
_MISSING_FEATURE_COUNTER = 'missing_neighbor_feature:'
# Examples logged per worker for each kind of bad input; counters carry the
# totals.
_MAX_LOGGED = 5

# Counters, all in METRICS_NAMESPACE, and what they count. Every edge line
# ends in exactly one bucket:
#   edge_lines_read = malformed_edge_lines + self_loops + duplicate_edges
#                     + (edges - reverse_edges_added)
#   edges = edges_unknown_target + edges_target_not_neighbor
#           + edges_from_non_seed + edges_beyond_max_neighbors
#           + neighbors_attached
# Per-feature counts 'missing_neighbor_feature:<name>' come on top.
COUNTERS = {
    'examples_read': 'examples read, all splits',
    'examples_without_id': 'examples whose id feature is unusable: several '
                           'values, floats, bad UTF-8, the empty string, '
                           'tabs or line breaks (kept, no neighbors)',
    'ids_derived_from_content': 'examples without the id feature, named by a '
                                'digest of their bytes as GraphBuilder does',
    'edge_lines_read': 'lines of the graph files',
    'malformed_edge_lines': 'lines that are not source<TAB>target[<TAB>w] '
                            'with a finite weight (skipped)',
    'self_loops': 'edges from a node to itself (dropped)',
    'duplicate_edges': 'repeated (source, target) lines (max weight kept)',
    'reverse_edges_added': 'edges that only add_undirected_edges created',
    'edges': 'distinct directed edges after merging',
    'edges_unknown_target': 'edges to ids no example has (skipped)',
    'edges_target_not_neighbor': 'edges to examples outside neighbor_splits',
    'edges_from_non_seed': 'edges leaving examples that are not seeds',
    'edges_unknown_source': 'of those, edges leaving ids no example has',
    'unknown_source_nodes': 'ids with usable out-edges but no example',
    'edges_beyond_max_neighbors': 'usable edges past a seed\'s top k',
    'neighbors_attached': 'neighbors merged, once per seed id',
    'duplicate_seed_ids': 'extra seed examples sharing an id (all kept)',
    'duplicate_neighbor_ids': 'extra neighbor examples sharing an id (one '
                              'is used, seed splits first)',
    'neighbor_examples_missing_features': 'neighbor examples lacking one of '
                                          'neighbor_features',
    'seeds_written': 'examples written to seed splits',
    'seeds_with_neighbors': 'of those, with at least one neighbor',
    'seeds_without_neighbors': 'of those, with none',
    'unlabeled_seeds_written': 'of those, from the unlabeled split',
}


def _counter(name):
  return Metrics.counter(METRICS_NAMESPACE, name)


# ---------------------------------------------------------------- batching
#
# Both joins group by a hash bucket of the node id rather than by the id, and
# every element that crosses a shuffle is a batch: (bucket, role byte +
# pickled [items]). This keeps Beam's per-element cost (coders, shuffle
# buffers, windowing) off the ~(examples + edges) items; the joins themselves
# run in plain Python over one bucket at a time. Keys are ints and values
# bytes, so Beam uses its fast varint/bytes coders.

# Roles of the batches that meet in the two joins.
_POOL, _OTHER, _EDGES = 0, 1, 2  # Join by target bucket.
_CANDIDATES, _SEEDS, _PRESENT, _UNNAMED_SEEDS = 3, 4, 5, 6  # By source bucket.
# The read stage's counter values, reported by the seed join: a stage with two
# consumers may run twice on Spark (a partition computed for each consumer
# before either cached it), which would count its examples twice, while each
# consumer still gets each element once.
_READ_COUNTS = 7
_S1, _S2 = 'by_target', 'by_source'
# Items per batch, by kind: examples are ~1 KB, edges a few dozen bytes;
# candidates share their target's entries within a batch.
_BATCH_ITEMS = {_POOL: 2000, _SEEDS: 2000, _UNNAMED_SEEDS: 2000,
                _CANDIDATES: 20000,
                _OTHER: 20000, _PRESENT: 20000, _EDGES: 20000}
# Input bytes (examples + edge files) per bucket. A bucket's items are held in
# memory while its join runs, so this bounds a join's memory as the input
# grows (bar one target with a huge in-degree: its distinct in-edges are held
# to merge duplicates). More buckets spread the joins over more workers but
# copy a target's features into more batches: on the DirectRunner, 100,000
# examples in 4 or 16 buckets took more time and memory than in 1.
_BYTES_PER_BUCKET = 64 << 20
_MAX_BUCKETS = 1 << 16


def bucket_of(node: str, num_buckets: int) -> int:
  """A node's bucket: stable across processes and runs (no hash seed)."""
  return zlib.crc32(node.encode('utf-8')) % num_buckets


# Role byte of a batch that waits in a file (see the module docstring); the
# batch's own role follows, then the file's path.
_SPILLED = 0xff


def _pack(role, items, spill_dir=None) -> bytes:
  """A batch: its role as the first byte, then the pickled items; with a
  `spill_dir`, written to a file there and referred to by path."""
  blob = bytes((role,)) + pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
  if spill_dir is None:
    return blob
  # A unique name: a retried bundle writes new files, and only the paths of
  # the attempt that Beam commits are ever read.
  path = os.path.join(spill_dir, uuid.uuid4().hex)
  with open(path, 'wb') as f:
    f.write(blob)
  return bytes((_SPILLED, role)) + path.encode('utf-8')


def _role(value) -> int:
  return value[1] if value[0] == _SPILLED else value[0]


def _unpack(value):
  if value[0] == _SPILLED:
    with open(value[2:].decode('utf-8'), 'rb') as f:
      value = f.read()
  return pickle.loads(memoryview(value)[1:])


def _unpack_seed_ids(blob):
  """The ids of a batch of seeds, without keeping the seeds decoded."""
  return [seed[0] for seed in _unpack(blob)]


class _Batcher:
  """Per (output, role, bucket) lists, emitted as batches when full."""

  def __init__(self, spill_dir):
    self._lists = {}
    self._spill_dir = spill_dir

  def add(self, tag, role, bucket, item):
    """Adds an item; returns a full batch to emit, or None."""
    key = (tag, role, bucket)
    items = self._lists.get(key)
    if items is None:
      items = self._lists[key] = []
    items.append(item)
    if len(items) >= _BATCH_ITEMS[role]:
      del self._lists[key]
      return beam.pvalue.TaggedOutput(
          tag, (bucket, _pack(role, items, self._spill_dir)))
    return None

  def flush(self, windowed):
    """All partial batches (as WindowedValues from finish_bundle)."""
    lists, self._lists = self._lists, {}
    for (tag, role, bucket), items in lists.items():
      value = (bucket, _pack(role, items, self._spill_dir))
      if windowed:
        value = GlobalWindows.windowed_value(value)
      yield beam.pvalue.TaggedOutput(tag, value)


class _Counts:
  """Counter increments summed locally, reported once per bundle."""

  def __init__(self, names):
    self._counters = {}
    self.values = dict.fromkeys(names, 0)

  def add(self, name, value=1):
    self.values[name] = self.values.get(name, 0) + value

  def report(self):
    for name, value in self.values.items():
      if value:
        counter = self._counters.get(name)
        if counter is None:
          counter = self._counters[name] = _counter(name)
        counter.inc(value)
    self.values = dict.fromkeys(self.values, 0)


@contextlib.contextmanager
def _no_cyclic_gc():
  """Pauses Python's cycle collector while a join builds its tables.

  The joins allocate millions of small acyclic tuples and dicts; each
  collection would walk all of them again. Reference counting still frees
  everything.
  """
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


class _ReadExamples(beam.DoFn):
  """Parses each example once and sends what each join needs of it.

  Out: _S1 batches of pool entries (id, preference, neighbor entries) or of
  other ids; _S2 batches of seeds (id, out split, labeled, serialized, has
  neighbor features), of seeds with an unusable id (out split, labeled,
  serialized) and of ids that are not seeds.
  """

  def __init__(self, split, config, num_buckets, pool_preference, seed_to,
               spill_dir):
    self._split = split
    self._id_feature = config.id_feature
    self._features = config.neighbor_features
    self._buckets = num_buckets
    self._preference = pool_preference  # None: not a neighbor split.
    self._seed_to = seed_to  # None, or (out split, labeled).
    self._spill_dir = spill_dir
    self._logged_no_id = self._logged_missing = 0

  def start_bundle(self):
    self._batches = _Batcher(self._spill_dir)
    self._counts = collections.Counter()

  def process(self, serialized):
    counts = self._counts
    counts['examples_read'] += 1
    example = augment_core.parse_example(serialized)
    node, derived = graph_io.example_node_id(example, self._id_feature,
                                             serialized)
    if derived:
      counts['ids_derived_from_content'] += 1
    if node is None:
      counts['examples_without_id'] += 1
      if self._logged_no_id < _MAX_LOGGED:
        self._logged_no_id += 1
        logging.warning(
            'GraphAugmentation: example %s of split %r (named by its digest) '
            'has an unusable id feature %r: %s (one bytes or int64 value '
            'without tabs or line breaks expected); it gets no neighbors and '
            'cannot be one.', graph_io.derive_example_id(serialized),
            self._split, self._id_feature,
            graph_io.describe_example_id(example, self._id_feature))
      if self._seed_to is not None:
        # Through the seed join too, so that every output record comes from
        # one step and writing fuses with it (a Flatten would buffer them).
        out_split, labeled = self._seed_to
        full = self._batches.add(
            _S2, _UNNAMED_SEEDS,
            zlib.crc32(serialized) % self._buckets,
            (out_split, labeled, serialized))
        if full is not None:
          yield full
      return
    bucket = 0 if self._buckets == 1 else bucket_of(node, self._buckets)
    add = self._batches.add
    if self._preference is not None:
      entries, missing = augment_core.payload_entries(example, self._features)
      if missing:
        counts['neighbor_examples_missing_features'] += 1
        for name in missing:
          counts[_MISSING_FEATURE_COUNTER + name] += 1
        if self._logged_missing < _MAX_LOGGED:
          self._logged_missing += 1
          logging.warning(
              'GraphAugmentation: neighbor example %r (split %r) lacks '
              'neighbor_features %s; its NL_nbr_<i>_ copies of them will be '
              'missing.', node, self._split, missing)
      full = add(_S1, _POOL, bucket, (node, self._preference, entries))
    else:
      full = add(_S1, _OTHER, bucket, node)
    if full is not None:
      yield full
    if self._seed_to is not None:
      out_split, labeled = self._seed_to
      full = add(_S2, _SEEDS, bucket, (
          node, out_split, labeled, serialized,
          augment_core.has_neighbor_features(example)))
    else:
      full = add(_S2, _PRESENT, bucket, node)
    if full is not None:
      yield full

  def finish_bundle(self):
    if self._counts:
      yield beam.pvalue.TaggedOutput(_S2, GlobalWindows.windowed_value(
          (0, _pack(_READ_COUNTS, dict(self._counts), self._spill_dir))))
    yield from self._batches.flush(windowed=True)


class _ReadEdges(beam.DoFn):
  """An edge file -> _S1 batches of (target, source, weight, from_input).

  Each file is read in one loop here rather than one Beam element per line.
  """

  def __init__(self, add_undirected_edges, num_buckets, spill_dir):
    self._add_undirected_edges = add_undirected_edges
    self._spill_dir = spill_dir
    self._buckets = num_buckets
    self._logged = 0

  def process(self, path):
    counts = _Counts(('edge_lines_read', 'malformed_edge_lines',
                      'self_loops'))
    buckets = self._buckets
    limit = _BATCH_ITEMS[_EDGES]
    undirected = self._add_undirected_edges
    lists = {}
    read = malformed = self_loops = 0

    def add(target, edge):
      bucket = 0 if buckets == 1 else bucket_of(target, buckets)
      items = lists.get(bucket)
      if items is None:
        items = lists[bucket] = []
      items.append(edge)
      if len(items) >= limit:
        del lists[bucket]
        return beam.pvalue.TaggedOutput(
            _S1, (bucket, _pack(_EDGES, items, self._spill_dir)))
      return None

    with FileSystems.open(path) as f:
      # Lines end at b'\n' only, as in Beam's text source.
      for raw in iter(f.readline, b''):
        read += 1
        # The common case inline; anything else gets parse_edge's verdict.
        parts = raw.rstrip(b'\r\n').split(b'\t')
        try:
          if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ValueError
          weight = float(parts[2])
          if not math.isfinite(weight):
            raise ValueError
          source = parts[0].decode('utf-8')
          target = parts[1].decode('utf-8')
        except ValueError:  # UnicodeDecodeError too.
          try:
            source, target, weight = augment_core.parse_edge(
                raw.decode('utf-8'), path)
          except (ValueError, UnicodeDecodeError) as e:
            malformed += 1
            if self._logged < _MAX_LOGGED:
              self._logged += 1
              logging.warning(
                  'GraphAugmentation: skipped malformed edge line: %s', e)
            continue
        if source == target:
          self_loops += 1
          continue
        full = add(target, (target, source, weight, 1))
        if full is not None:
          yield full
        if undirected:
          full = add(source, (source, target, weight, 0))
          if full is not None:
            yield full
    counts.add('edge_lines_read', read)
    counts.add('malformed_edge_lines', malformed)
    counts.add('self_loops', self_loops)
    counts.report()
    for bucket, items in lists.items():
      yield beam.pvalue.TaggedOutput(
          _S1, (bucket, _pack(_EDGES, items, self._spill_dir)))


class _JoinTargets(beam.DoFn):
  """One target bucket: merges duplicate edges and resolves their targets.

  For every distinct (source, target) edge whose target is a neighbor
  example, sends (source, weight, target, entries) to the source's bucket;
  counts the rest. Holds the bucket's neighbor examples and edges.
  """

  def __init__(self, num_buckets, spill_dir):
    self._buckets = num_buckets
    self._spill_dir = spill_dir
    self._logged = 0

  def process(self, element):
    with _no_cyclic_gc():
      yield from self._join(element)

  def _join(self, element):
    _, blobs = element
    counts = _Counts(('duplicate_neighbor_ids', 'edges', 'duplicate_edges',
                      'reverse_edges_added', 'edges_unknown_target',
                      'edges_target_not_neighbor'))
    # Neighbor examples first, then the edges (grouped values can be
    # iterated again); a batch's role is its first byte.
    pool, others, edges = {}, set(), {}
    for blob in blobs:
      role = _role(blob)
      if role == _POOL:
        for node, preference, entries in _unpack(blob):
          known = pool.get(node)
          if known is None:
            pool[node] = (preference, entries)
          else:
            counts.add('duplicate_neighbor_ids')
            pool[node] = _pick(known, (preference, entries))
      elif role == _OTHER:
        others.update(_unpack(blob))
    for blob in blobs:
      if _role(blob) != _EDGES:
        continue
      for target, source, weight, from_input in _unpack(blob):
        into = edges.get(target)
        if into is None:
          into = edges[target] = {}
        merged = into.get(source)
        if merged is None:
          into[source] = (weight, from_input)
        else:
          into[source] = (max(weight, merged[0]), merged[1] + from_input)

    buckets = self._buckets
    lists = {}
    unknown = {}
    duplicates = reversed_only = distinct = 0
    # Target by target, so that a batch holds a target's entries once (pickle
    # shares repeated objects) however many of its sources it carries.
    limit = _BATCH_ITEMS[_CANDIDATES]
    while edges:  # Popping frees the merged edges as they are sent.
      target, into = edges.popitem()
      distinct += len(into)
      for _, from_input in into.values():
        if from_input > 1:
          duplicates += from_input - 1
        elif from_input == 0:
          reversed_only += 1
      known = pool.get(target)
      if known is not None:
        entries = known[1]
        for source, (weight, _) in into.items():
          bucket = 0 if buckets == 1 else bucket_of(source, buckets)
          items = lists.get(bucket)
          if items is None:
            items = lists[bucket] = []
          items.append((source, weight, target, entries))
          if len(items) >= limit:
            del lists[bucket]
            yield bucket, _pack(_CANDIDATES, items, self._spill_dir)
      elif target in others:
        counts.add('edges_target_not_neighbor', len(into))
      else:
        counts.add('edges_unknown_target', len(into))
        unknown[target] = len(into)
    counts.add('edges', distinct)
    counts.add('duplicate_edges', duplicates)
    counts.add('reverse_edges_added', reversed_only)
    for target in sorted(unknown)[:max(0, _MAX_LOGGED - self._logged)]:
      self._logged += 1
      logging.warning('GraphAugmentation: %d edge(s) point to id %r, which '
                      'no input example has.', unknown[target], target)
    counts.report()
    for bucket, items in lists.items():
      yield bucket, _pack(_CANDIDATES, items, self._spill_dir)


def _pick(a, b):
  """augment_core.pick_example's rule on (preference, entries) pairs."""
  if a[0] != b[0]:
    return min(a, b, key=lambda c: c[0])
  if (augment_core.entries_to_example(b[1])
      < augment_core.entries_to_example(a[1])):
    return b
  return a


class _JoinSeeds(beam.DoFn):
  """One source bucket: bounded top-k per seed id, augmented seeds out.

  Candidates go through a top-k heap per source as they come, so a node
  keeps at most `max_neighbors` of them whatever its degree.
  """

  def __init__(self, max_neighbors, mark_labeled):
    self._k = max_neighbors
    self._mark_labeled = mark_labeled

  def process(self, element):
    with _no_cyclic_gc():
      yield from self._join(element)

  def _join(self, element):
    _, blobs = element
    counts = _Counts((
        'edges_from_non_seed', 'edges_unknown_source', 'unknown_source_nodes',
        'edges_beyond_max_neighbors', 'neighbors_attached',
        'duplicate_seed_ids', 'seeds_written', 'seeds_with_neighbors',
        'seeds_without_neighbors', 'unlabeled_seeds_written'))
    k = self._k
    top_add = augment_core.top_add
    # Candidates and ids first; seeds are decoded a batch at a time below,
    # after the ranking (grouped values can be iterated again).
    tops, present, seen_ids = {}, set(), {}
    for blob in blobs:
      role = _role(blob)
      if role == _CANDIDATES:
        for source, weight, target, entries in _unpack(blob):
          accumulator = tops.get(source)
          if accumulator is None:
            accumulator = tops[source] = augment_core.top_create()
          top_add(accumulator, (weight, target, entries), k)
      elif role == _SEEDS:
        for node in _unpack_seed_ids(blob):
          seen_ids[node] = seen_ids.get(node, 0) + 1
      elif role == _PRESENT:
        present.update(_unpack(blob))
      elif role == _READ_COUNTS:
        for name, value in _unpack(blob).items():
          counts.add(name, value)

    ranked = {}
    for node, copies in seen_ids.items():
      if copies > 1:
        counts.add('duplicate_seed_ids', copies - 1)
      accumulator = tops.pop(node, None)
      if accumulator is None:
        ranked[node] = []
        continue
      seen, neighbors = augment_core.top_extract(accumulator)
      counts.add('neighbors_attached', len(neighbors))
      counts.add('edges_beyond_max_neighbors', seen - len(neighbors))
      ranked[node] = neighbors
    # Sources left have edges but no seed example.
    for node, (seen, _) in tops.items():
      counts.add('edges_from_non_seed', seen)
      if node not in present:
        counts.add('unknown_source_nodes')
        counts.add('edges_unknown_source', seen)
    tops = None

    mark = self._mark_labeled
    seeds = (seed for blob in blobs if _role(blob) == _SEEDS
             for seed in _unpack(blob))
    for node, out_split, labeled, serialized, has_nbr_features in seeds:
      neighbors = ranked[node]
      counts.add('seeds_written')
      counts.add('seeds_with_neighbors' if neighbors
                 else 'seeds_without_neighbors')
      if not labeled:
        counts.add('unlabeled_seeds_written')
      yield beam.pvalue.TaggedOutput(out_split, augment_core.augment_fast(
          serialized, neighbors, labeled if mark else None,
          has_nbr_features))
    # Seeds with an unusable id: kept, with NL_num_nbrs = 0 (pack_nbrs fails).
    no_id = (seed for blob in blobs if _role(blob) == _UNNAMED_SEEDS
             for seed in _unpack(blob))
    for out_split, labeled, serialized in no_id:
      counts.add('seeds_written')
      counts.add('seeds_without_neighbors')
      if not labeled:
        counts.add('unlabeled_seeds_written')
      yield beam.pvalue.TaggedOutput(out_split, augment_core.augment(
          serialized, [], labeled if mark else None))
    counts.report()


# ---------------------------------------------------------------- writing

_crc32c = crcmod.predefined.mkPredefinedCrcFun('crc-32c')


def _masked_crc32c(data: bytes) -> bytes:
  """TFRecord's masked CRC-32C of `data`, little-endian."""
  crc = _crc32c(data)
  return struct.pack('<I', (((crc >> 15) | (crc << 17)) + 0xa282ead8)
                     & 0xffffffff)


def tfrecord_frame(record: bytes) -> bytes:
  """One TFRecord: length, its CRC, the data, its CRC."""
  length = struct.pack('<Q', len(record))
  return b''.join((length, _masked_crc32c(length), record,
                   _masked_crc32c(record)))


class _GzipWriter:
  """Gzip-compresses TFRecords on a helper thread, in order.

  zlib's deflate runs without the GIL, so compressing a chunk overlaps with
  the Python that produces the next records; at most two chunks wait.
  """
  _CHUNK_BYTES = 4 << 20

  def __init__(self, raw):
    self._raw = raw
    self._compressor = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    self._parts, self._size = [], 0
    self._thread = futures.ThreadPoolExecutor(1)
    self._pending = collections.deque()

  def write_record(self, record: bytes):
    self._parts.append(tfrecord_frame(record))
    self._size += len(record) + 16
    if self._size >= self._CHUNK_BYTES:
      self._submit()

  def _submit(self):
    chunk = b''.join(self._parts)
    self._parts, self._size = [], 0
    while len(self._pending) >= 2:
      self._pending.popleft().result()
    self._pending.append(self._thread.submit(self._compress, chunk))

  def _compress(self, chunk):
    self._raw.write(self._compressor.compress(chunk))

  def close(self):
    try:
      if self._parts:
        self._submit()
      while self._pending:
        self._pending.popleft().result()
    finally:
      self._thread.shutdown()
    self._raw.write(self._compressor.flush())
    self._raw.close()


class _GzipTFRecordSink(filebasedsink.FileBasedSink):
  """The files of beam.io.WriteToTFRecord(prefix, file_name_suffix='.gz'):
  gzip TFRecords (zlib's default level), compressed beside the join."""

  def __init__(self, file_path_prefix):
    super().__init__(
        file_path_prefix, coder=coders.BytesCoder(), file_name_suffix='.gz',
        mime_type='application/octet-stream',
        compression_type=CompressionTypes.UNCOMPRESSED)

  def open(self, temp_path):
    return _GzipWriter(super().open(temp_path))

  def write_encoded_record(self, file_handle, encoded_value):
    file_handle.write_record(encoded_value)


def _query_counters(result) -> Dict[str, int]:
  """Counters of METRICS_NAMESPACE, every known one present (0 if unseen)."""
  counters = beam_executor.read_counters(result, METRICS_NAMESPACE)
  return {**{name: 0 for name in COUNTERS}, **counters} if counters else {}


def _first_edge_source(edge_files) -> Optional[str]:
  """The source id of the first edge line of the graph, if any."""
  for path in edge_files:
    with FileSystems.open(path) as f:
      line = f.readline().decode('utf-8', 'replace')
    if line.strip():
      return line.split('\t')[0]
  return None


def _first_records(split_uri, limit=20):
  """Up to `limit` serialized examples of one split, for an early id check."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(fileio.glob(os.path.join(split_uri, '*')))
  if not files:
    return []
  dataset = tf.data.TFRecordDataset(
      files[:1], compression_type='GZIP' if files[0].endswith('.gz') else '')
  return [r.numpy() for r in dataset.take(limit)]


def _copy_split(source_uri, dest_uri):
  fileio.makedirs(dest_uri)
  for name in fileio.listdir(source_uri):
    fileio.copy(os.path.join(source_uri, name), os.path.join(dest_uri, name),
                overwrite=True)


class Executor(beam_executor.BeamExecutor):
  """Adds NSL neighbor features to the seed splits of Examples."""

  def Do(self, input_dict, output_dict, exec_properties):
    self._log_startup(input_dict, output_dict, exec_properties)
    examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
    graph = artifact_utils.get_single_instance(input_dict[GRAPH_KEY])
    output = artifact_utils.get_single_instance(
        output_dict[AUGMENTED_EXAMPLES_KEY])

    payload_format = (
        examples.get_string_custom_property(PAYLOAD_FORMAT_PROPERTY)
        if examples.has_custom_property(PAYLOAD_FORMAT_PROPERTY)
        else _TF_EXAMPLE)  # TFX's rule: artifacts from before the property.
    if payload_format != _TF_EXAMPLE:
      raise ValueError(
          'GraphAugmentation reads tf.Example records, but the input examples '
          f'have payload format {payload_format}.')
    splits = artifact_utils.decode_split_names(examples.split_names)
    config = AugmentParams.from_exec_properties(exec_properties).resolve(
        splits)
    edge_files = graph_io.edge_files(graph.uri)  # Raises if there are none.
    self._check_ids(examples, config, edge_files)
    output.split_names = artifact_utils.encode_split_names(splits)
    logging.info('GraphAugmentation: seeds %s, neighbors %s, %d edge '
                 'file(s) under %s.', config.seed_splits,
                 config.neighbor_splits, len(edge_files), graph.uri)

    pipeline = self._make_beam_pipeline()
    spill_dir = self._spill_dir(pipeline)
    try:
      self._build(pipeline, examples, output, splits, config, edge_files,
                  spill_dir)
      result = pipeline.run()
      result.wait_until_finish()
    finally:
      if spill_dir is not None:
        shutil.rmtree(spill_dir, ignore_errors=True)

    for split in splits:
      if split not in config.seed_splits:
        _copy_split(artifact_utils.get_split_uri([examples], split),
                    artifact_utils.get_split_uri([output], split))
    output.set_string_custom_property(PAYLOAD_FORMAT_PROPERTY, _TF_EXAMPLE)
    if examples.has_custom_property(FILE_FORMAT_PROPERTY):
      output.set_string_custom_property(
          FILE_FORMAT_PROPERTY,
          examples.get_string_custom_property(FILE_FORMAT_PROPERTY))

    stats = _query_counters(result)
    output.set_string_custom_property(STATS_PROPERTY,
                                      json.dumps(stats, sort_keys=True))
    logging.info('GraphAugmentation stats: %s', stats)
    _check_stats(stats, graph.uri, config)

  def _spill_dir(self, pipeline) -> Optional[str]:
    """A fresh local folder for the batches between stages when `pipeline`
    runs on the DirectRunner, whose workers share this host (see the module
    docstring); None on other runners."""
    if not beam_executor.is_local(pipeline):
      return None
    return tempfile.mkdtemp(prefix='tfx_nsl_graph_augmentation-')

  def _check_ids(self, examples, config, edge_files):
    """Fails early when the id feature is plainly wrong: unusable in every
    one of the first examples of a seed split, or absent from all of them
    while the graph does not name nodes by digests."""
    for split in config.seed_splits:
      sample = _first_records(artifact_utils.get_split_uri([examples], split))
      if not sample:
        continue
      parsed = [augment_core.parse_example(r) for r in sample]
      named = [graph_io.example_node_id(e, config.id_feature, r)
               for e, r in zip(parsed, sample)]
      where = (f'No example among the first {len(sample)} of split {split!r} '
               f'has a usable id feature {config.id_feature!r} (one bytes or '
               'int64 value)')
      hint = 'Set id_feature to the feature that the graph names nodes by.'
      if all(node is None for node, _ in named):
        held = graph_io.describe_example_id(parsed[0], config.id_feature)
        raise ValueError(f'{where}; the first holds {held}. {hint}')
      first = (_first_edge_source(edge_files)
               if all(derived for _, derived in named) else None)
      if first is not None and not first.startswith(
          graph_io.DERIVED_ID_PREFIX):
        raise ValueError(
            f'{where}: it is absent, so their ids would be digests of the '
            f'records, but the graph names nodes like {first!r}. Their '
            f'features are {sorted(parsed[0].features.feature)}. {hint}')
      return

  def _build(self, p, examples, output, splits, config, edge_files,
             spill_dir):
    seed_inputs = {split: (split, True) for split in config.seed_splits}
    if config.unlabeled_seed_split:
      seed_inputs[config.unlabeled_seed_split] = (config.seed_splits[0], False)
    split_uris = {s: artifact_utils.get_split_uri([examples], s)
                  for s in splits}
    num_buckets = _num_buckets(
        [f for s in splits for f in fileio.glob(
            os.path.join(split_uris[s], '*'))] + list(edge_files))
    logging.info('GraphAugmentation: joining in %d bucket(s).', num_buckets)

    by_target, by_source = [], []
    for split in splits:
      # Neighbor examples: seed splits first, as pack_nbrs prefers labeled.
      preference = None
      if split in config.neighbor_splits:
        preference = (0 if split in config.seed_splits
                      else 1 + config.neighbor_splits.index(split))
      parts = (
          p
          | f'Read[{split}]' >> beam.io.ReadFromTFRecord(
              os.path.join(split_uris[split], '*'))
          | f'Examples[{split}]' >> beam.ParDo(_ReadExamples(
              split, config, num_buckets, preference, seed_inputs.get(split),
              spill_dir)).with_outputs(_S1, _S2))
      by_target.append(parts[_S1])
      by_source.append(parts[_S2])

    edges = (
        p
        | 'EdgeFiles' >> beam.Create(sorted(edge_files))
        | 'SpreadEdgeFiles' >> beam.Reshuffle()
        | 'ReadEdges' >> beam.ParDo(_ReadEdges(
            config.add_undirected_edges, num_buckets, spill_dir)).with_outputs(
                _S1, main='unused'))
    by_target.append(edges[_S1])
    by_source.append(
        by_target
        | 'FlattenByTarget' >> beam.Flatten().with_output_types(
            Tuple[int, bytes])
        | 'GroupByTarget' >> beam.GroupByKey()
        | 'JoinTargets' >> beam.ParDo(_JoinTargets(num_buckets, spill_dir)))
    augmented = (
        by_source
        | 'FlattenBySource' >> beam.Flatten().with_output_types(
            Tuple[int, bytes])
        | 'GroupBySource' >> beam.GroupByKey()
        | 'JoinSeeds' >> beam.ParDo(_JoinSeeds(
            config.max_neighbors, config.unlabeled_as_seeds)).with_outputs(
                *config.seed_splits))

    for split in config.seed_splits:
      _ = (augmented[split]
           | f'Write[{split}]' >> beam.io.Write(_GzipTFRecordSink(
               os.path.join(artifact_utils.get_split_uri([output], split),
                            OUTPUT_FILE_PREFIX))))


def _num_buckets(paths) -> int:
  """Buckets for the joins: one per _BYTES_PER_BUCKET of input."""
  size = 0
  for path in paths:
    try:
      size += fileio.stat(path).length
    except Exception:  # pylint: disable=broad-except
      pass  # A size only tunes the bucket count.
  return max(1, min(_MAX_BUCKETS, math.ceil(size / _BYTES_PER_BUCKET)))


def _check_stats(stats, graph_uri, config):
  """Raises where the output would silently carry no graph at all."""
  if not stats:
    return
  if not stats['edge_lines_read']:
    raise ValueError(
        f'Graph {graph_uri} has no edges, so no example would get a '
        'neighbor. If it came from GraphBuilder, see its stats.json (e.g. a '
        'similarity_threshold that no pair reaches).')
  if stats['edges'] == 0:
    raise ValueError(
        f'No usable edge in graph {graph_uri}: of {stats["edge_lines_read"]} '
        f'lines, {stats["malformed_edge_lines"]} are malformed and '
        f'{stats["self_loops"]} are self-loops. Expected lines '
        '`source<TAB>target[<TAB>weight]`.')
  if (stats['edges'] and stats['seeds_written']
      and stats['neighbors_attached'] == 0):
    raise ValueError(
        f'No seed example got a neighbor from graph {graph_uri}: of '
        f'{stats["edges"]} edges, {stats["edges_unknown_target"]} name '
        f'targets that no example has, {stats["edges_target_not_neighbor"]} '
        f'point into splits outside neighbor_splits '
        f'{config.neighbor_splits}, {stats["edges_from_non_seed"]} leave '
        f'non-seed examples; {stats["ids_derived_from_content"]} examples '
        f'lack id_feature {config.id_feature!r} (named by digests). Check '
        'that it holds the ids the graph uses.')
