"""GraphAugmentation's two joins as plain functions: no TFX, no Beam.

The executor runs each function here as one Beam step; the unit tests call the
same functions.

  route_example   an example -> its entries for both joins
  edge_items      the lines of one edge file -> (target, source, weight,
                  from_input), reverse edges included
  join_targets    one target bucket: merged edges, targets resolved to their
                  neighbor examples -> (source, weight, target, entries)
  join_seeds      one source bucket: top-k per seed -> augmented seeds

Both joins group by a hash bucket of the node id rather than by the id, and
every element that crosses a shuffle is a batch: (bucket, role byte + pickled
[items]). That keeps Beam's per-element cost (coders, shuffle buffers,
windowing) off the ~(examples + edges) items; the joins run in plain Python
over one bucket at a time, and Beam uses its fast varint/bytes coders for the
int keys and bytes values.
"""
import collections
import contextlib
import gc
import math
import os
import pickle
import uuid
import zlib
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

from tfx_nsl import graph_io
from tfx_nsl.components.graph_augmentation import augment_core
from tfx_nsl.components.graph_augmentation import config

# Roles of the batches that meet in the two joins.
POOL, OTHER, EDGES = 0, 1, 2  # Join by target bucket.
CANDIDATES, SEEDS, PRESENT, UNNAMED_SEEDS = 3, 4, 5, 6  # By source bucket.
# The read stage's counter values, reported by the seed join: a stage with two
# consumers may run twice on Spark (a partition computed for each consumer
# before either cached it), which would count its examples twice, while each
# consumer still gets each element once.
READ_COUNTS = 7
BY_TARGET, BY_SOURCE = 'by_target', 'by_source'
# Items per batch, by role: examples are ~1 KB, edges a few dozen bytes;
# candidates share their target's entries within a batch.
BATCH_ITEMS = {POOL: 2000, SEEDS: 2000, UNNAMED_SEEDS: 2000,
               CANDIDATES: 20000, OTHER: 20000, PRESENT: 20000, EDGES: 20000}
# Input bytes (examples + edge files) per bucket. A bucket's items are held in
# memory while its join runs, so this bounds a join's memory as the input
# grows (bar one target with a huge in-degree: its distinct in-edges are held
# to merge duplicates). More buckets spread the joins over more workers but
# copy a target's features into more batches: on the DirectRunner, 100,000
# examples in 4 or 16 buckets took more time and memory than in 1.
BYTES_PER_BUCKET = 64 << 20
MAX_BUCKETS = 1 << 16


def bucket_of(node: str, num_buckets: int) -> int:
  """A node's bucket: stable across processes and runs (no hash seed)."""
  if num_buckets == 1:
    return 0
  return zlib.crc32(node.encode('utf-8')) % num_buckets


def num_buckets(input_bytes: int) -> int:
  """Buckets for the joins: one per BYTES_PER_BUCKET of input."""
  return max(1, min(MAX_BUCKETS, math.ceil(input_bytes / BYTES_PER_BUCKET)))


# Role byte of a batch that waits in a file of a local folder, for the
# DirectRunner (see executor.py); the batch's own role follows, then the
# file's path.
_SPILLED = 0xff


def pack(role: int, items, spill_dir: Optional[str] = None) -> bytes:
  """A batch: its role as the first byte, then the pickled items; with a
  `spill_dir`, written to a new file there and referred to by path."""
  blob = bytes((role,)) + pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
  if spill_dir is None:
    return blob
  # A unique name: a retried bundle writes new files, and only the paths of
  # the attempt that Beam commits are ever read.
  path = os.path.join(spill_dir, uuid.uuid4().hex)
  with open(path, 'wb') as f:
    f.write(blob)
  return bytes((_SPILLED, role)) + path.encode('utf-8')


def role_of(blob: bytes) -> int:
  return blob[1] if blob[0] == _SPILLED else blob[0]


def unpack(blob: bytes):
  if blob[0] == _SPILLED:
    with open(blob[2:].decode('utf-8'), 'rb') as f:
      blob = f.read()
  return pickle.loads(memoryview(blob)[1:])


class Batcher:
  """Per (tag, role, bucket) lists of items, given back as batches:
  (tag, (bucket, packed batch)), packed with `spill_dir` (see pack)."""

  def __init__(self, spill_dir: Optional[str] = None):
    self._lists = {}
    self._spill_dir = spill_dir

  def add(self, tag, role, bucket, item):
    """Adds an item; returns a full batch, or None."""
    key = (tag, role, bucket)
    items = self._lists.get(key)
    if items is None:
      items = self._lists[key] = []
    items.append(item)
    if len(items) >= BATCH_ITEMS[role]:
      del self._lists[key]
      return tag, (bucket, pack(role, items, self._spill_dir))
    return None

  def flush(self):
    """Every partial batch."""
    lists, self._lists = self._lists, {}
    for (tag, role, bucket), items in lists.items():
      yield tag, (bucket, pack(role, items, self._spill_dir))


@contextlib.contextmanager
def no_cyclic_gc():
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


# How one split's examples take part: `preference` None for a split outside
# neighbor_splits (else lower wins among duplicate ids: seed splits first, as
# pack_nbrs prefers labeled examples); `seed_to` None for a split that is not
# a seed split, else (output split, labeled).
Route = collections.namedtuple(
    'Route', ['id_feature', 'neighbor_features', 'preference', 'seed_to',
              'num_buckets'])


def route_example(serialized: bytes, route: Route, counts, batcher: Batcher):
  """Parses one example once and adds what each join needs of it to
  `batcher`: by target, a pool entry (id, preference, neighbor entries) or
  just its id; by source, the seed (id, output split, labeled, serialized,
  already augmented) or, for a non-seed, its id.

  Returns (node id or None if unusable, neighbor_features it lacks) and the
  full batches, as (tag, (bucket, batch)).
  """
  counts['examples_read'] += 1
  example = augment_core.parse_example(serialized)
  node, derived = graph_io.example_node_id(example, route.id_feature,
                                           serialized)
  counts['ids_derived_from_content'] += derived
  full = []
  if node is None:
    counts['examples_without_id'] += 1
    if route.seed_to is not None:
      # Through the seed join too, so that every output record comes from
      # one step and writing fuses with it (a Flatten would buffer them).
      out_split, labeled = route.seed_to
      full.append(batcher.add(BY_SOURCE, UNNAMED_SEEDS,
                              zlib.crc32(serialized) % route.num_buckets,
                              (out_split, labeled, serialized)))
    return (node, []), [f for f in full if f is not None]
  bucket = bucket_of(node, route.num_buckets)
  missing = []
  if route.preference is not None:
    entries, missing = augment_core.payload_entries(example,
                                                    route.neighbor_features)
    if missing:
      counts['neighbor_examples_missing_features'] += 1
      for name in missing:
        counts[config.MISSING_FEATURE_COUNTER + name] += 1
    full.append(batcher.add(BY_TARGET, POOL, bucket,
                            (node, route.preference, entries)))
  else:
    full.append(batcher.add(BY_TARGET, OTHER, bucket, node))
  if route.seed_to is not None:
    out_split, labeled = route.seed_to
    full.append(batcher.add(BY_SOURCE, SEEDS, bucket, (
        node, out_split, labeled, serialized,
        augment_core.has_neighbor_features(example))))
  else:
    full.append(batcher.add(BY_SOURCE, PRESENT, bucket, node))
  return (node, missing), [f for f in full if f is not None]


def edge_items(lines: Iterable[bytes], add_undirected_edges: bool, where: str,
               counts, warn: Callable[[str], None]
              ) -> Iterator[Tuple[str, str, float, int]]:
  """(target, source, weight, from_input) of each usable line of one edge
  file, plus its reverse (from_input 0) with `add_undirected_edges`.

  Lines end at b'\\n' only, as in Beam's text source. Malformed lines and
  self-loops are counted (and malformed ones passed to `warn`), not yielded.
  """
  read = malformed = self_loops = 0
  for raw in lines:
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
            raw.decode('utf-8'), where)
      except UnicodeDecodeError as e:
        malformed += 1
        warn(f'{where}: a line that is not UTF-8 ({e}): {raw[:200]!r}')
        continue
      except ValueError as e:
        malformed += 1
        warn(str(e))
        continue
    if source == target:
      self_loops += 1
      continue
    yield target, source, weight, 1
    if add_undirected_edges:
      yield source, target, weight, 0
  counts['edge_lines_read'] += read
  counts['malformed_edge_lines'] += malformed
  counts['self_loops'] += self_loops


def merge_edges(items) -> Dict[str, Dict[str, Tuple[float, int]]]:
  """{target: {source: (max weight, input lines)}} of edge_items' items: a
  repeated pair keeps its largest weight, as pack_nbrs does; the count of
  input lines tells duplicate lines (> 1) from added reverses (0)."""
  edges = {}
  for target, source, weight, from_input in items:
    into = edges.get(target)
    if into is None:
      into = edges[target] = {}
    merged = into.get(source)
    if merged is None:
      into[source] = (weight, from_input)
    else:
      into[source] = (max(weight, merged[0]), merged[1] + from_input)
  return edges


def pick_neighbor(a, b):
  """Of two (preference, entries) examples sharing an id, the one to use:
  the lower preference (seed splits first), then the smaller serialized
  features, so the choice never depends on the order a runner delivers them
  in."""
  if a[0] != b[0]:
    return min(a, b, key=lambda c: c[0])
  if (augment_core.entries_to_example(b[1])
      < augment_core.entries_to_example(a[1])):
    return b
  return a


def join_targets(blobs, counts, unknown: Dict[str, int]):
  """One target bucket: for every distinct (source, target) edge whose target
  is a neighbor example, yields (source, weight, target, entries), target by
  target; counts the rest. `unknown` gets {target id no example has: edges}.

  `blobs` are the bucket's batches (iterated twice: pool first, then edges).
  """
  pool, others = {}, set()
  for blob in blobs:
    role = role_of(blob)
    if role == POOL:
      for node, preference, entries in unpack(blob):
        known = pool.get(node)
        if known is None:
          pool[node] = (preference, entries)
        else:
          counts['duplicate_neighbor_ids'] += 1
          pool[node] = pick_neighbor(known, (preference, entries))
    elif role == OTHER:
      others.update(unpack(blob))
  edges = merge_edges(item for blob in blobs if role_of(blob) == EDGES
                      for item in unpack(blob))
  while edges:  # Popping frees the merged edges as they are sent.
    target, into = edges.popitem()
    counts['edges'] += len(into)
    for _, from_input in into.values():
      if from_input > 1:
        counts['duplicate_edges'] += from_input - 1
      elif from_input == 0:
        counts['reverse_edges_added'] += 1
    known = pool.get(target)
    if known is not None:
      entries = known[1]
      for source, (weight, _) in into.items():
        yield source, weight, target, entries
    elif target in others:
      counts['edges_target_not_neighbor'] += len(into)
    else:
      counts['edges_unknown_target'] += len(into)
      unknown[target] = len(into)


def join_seeds(blobs, max_neighbors: int, mark_labeled: bool, counts
              ) -> Iterator[Tuple[str, bytes]]:
  """One source bucket: yields (output split, augmented seed) for every seed.

  Candidates go through a bounded top-k per source as they come (pack_nbrs'
  order: weight, then id, descending), so a node keeps at most
  `max_neighbors` of them whatever its degree. Seeds are decoded a batch at a
  time after the ranking (`blobs` is iterated more than once).
  """
  tops, present, seen_ids = {}, set(), {}
  for blob in blobs:
    role = role_of(blob)
    if role == CANDIDATES:
      for source, weight, target, entries in unpack(blob):
        accumulator = tops.get(source)
        if accumulator is None:
          accumulator = tops[source] = augment_core.top_create()
        augment_core.top_add(accumulator, (weight, target, entries),
                             max_neighbors)
    elif role == SEEDS:
      for seed in unpack(blob):
        seen_ids[seed[0]] = seen_ids.get(seed[0], 0) + 1
    elif role == PRESENT:
      present.update(unpack(blob))
    elif role == READ_COUNTS:
      counts.update(unpack(blob))

  ranked = {}
  for node, copies in seen_ids.items():
    if copies > 1:
      counts['duplicate_seed_ids'] += copies - 1
    accumulator = tops.pop(node, None)
    if accumulator is None:
      ranked[node] = []
      continue
    seen, neighbors = augment_core.top_extract(accumulator)
    counts['neighbors_attached'] += len(neighbors)
    counts['edges_beyond_max_neighbors'] += seen - len(neighbors)
    ranked[node] = neighbors
  # Sources left have edges but no seed example.
  for node, (seen, _) in tops.items():
    counts['edges_from_non_seed'] += seen
    if node not in present:
      counts['unknown_source_nodes'] += 1
      counts['edges_unknown_source'] += seen
  del tops

  def written(labeled, neighbors):
    counts['seeds_written'] += 1
    counts['seeds_with_neighbors' if neighbors
           else 'seeds_without_neighbors'] += 1
    if not labeled:
      counts['unlabeled_seeds_written'] += 1
    return labeled if mark_labeled else None

  for blob in blobs:
    role = role_of(blob)
    if role == SEEDS:
      for node, out_split, labeled, serialized, augmented in unpack(blob):
        neighbors = ranked[node]
        yield out_split, augment_core.augment_fast(
            serialized, neighbors, written(labeled, neighbors), augmented)
    elif role == UNNAMED_SEEDS:
      # An unusable id: kept, with NL_num_nbrs = 0 (pack_nbrs would fail).
      for out_split, labeled, serialized in unpack(blob):
        yield out_split, augment_core.augment(serialized, [],
                                              written(labeled, []))


def read_counts_batch(counts, spill_dir=None) -> Tuple[int, bytes]:
  """The read step's counts as a by-source batch for bucket 0 (see
  READ_COUNTS)."""
  return 0, pack(READ_COUNTS, dict(counts), spill_dir)

