"""The corpus as id-range node shards, and the files that hold it; no Beam.

No process ever holds the whole corpus. Read bundles store their rows as
batch files and report a summary (row count, embedding lengths, a sample of
ids); the merged summaries give the dimensions and the id boundaries of the
node shards; each batch file is validated on its own and its rows are routed
to their shards (as stored Runs: a shuffle carries only where rows are);
each shard, sorted by id, becomes one file. A node's index
is its rank in the global id order: shard s's row r is node offsets[s] + r,
so ties broken by index are broken by id on every runner.

Ids travel and are stored as UTF-8 bytes ('S' arrays): their byte order is
their code point order, and the arrays need no pickle.
"""
import collections
import functools
import io
import math
import os
import threading
import uuid
import zlib

import numpy as np
import tensorflow as tf

from tfx_nsl.components.graph_builder import graph_core

# ids: object array of str (None: unusable); lengths: [n, num_features] int
# (-1: missing); flats: per feature, the concatenated values of the rows
# that have it.
EmbeddingBatch = collections.namedtuple('EmbeddingBatch',
                                        ['ids', 'lengths', 'flats'])
# A stored batch file and what its rows contribute to the Summary.
Staged = collections.namedtuple('Staged', ['path', 'summary'])
# num_rows; length_counts: per feature, {length: rows}; id_sample: up to
# ID_SAMPLE_SIZE (hash, id) pairs, the smallest hashes seen: a uniform sample
# of the distinct ids whatever the order they come in.
Summary = collections.namedtuple('Summary',
                                 ['num_rows', 'length_counts', 'id_sample'])
# What every step needs of the corpus before it is sharded.
Plan = collections.namedtuple('Plan', ['dims', 'boundaries'])
# One stored node shard; id_bytes: the width of its ids.
ShardFile = collections.namedtuple('ShardFile',
                                   ['shard', 'path', 'count', 'id_bytes'])
ID_SAMPLE_SIZE = 1 << 14  # ~400 KB with short ids: one element
# Bytes of one element that goes into a shuffle: Flink's batch GroupByKey
# pre-combines its input in a sort buffer of a few MB and fails on a larger
# record ("Cannot write record to fresh sort buffer. Record too large").
ELEMENT_BYTES = 1 << 20
# Nodes of a shard when neither num_shards nor the memory budget asks for
# more shards (and at most this many shards then).
NODES_PER_SHARD = 50_000
MAX_DEFAULT_SHARDS = 256
# Rejections of validate(), in the order they are tested.
REJECTIONS = ('unusable_id', 'missing_embedding', 'wrong_dimension',
              'non_finite_embedding', 'zero_embedding', 'embedding_too_large')


def id_hash(ids, seed=0):
  """A stable 32-bit hash of each id (bytes), the same on every worker."""
  return np.fromiter((zlib.crc32(i, seed) for i in ids.tolist()), np.uint32,
                     len(ids))


def encode_ids(ids):
  return np.array([i.encode('utf-8') for i in ids], dtype='S') if len(
      ids) else np.zeros(0, 'S1')


def decode_ids(ids):
  return [i.decode('utf-8') for i in ids.tolist()]


def _bottom(pairs, size):
  pairs = sorted(set(pairs))
  return pairs[:size]


def summarize(batch: EmbeddingBatch) -> Summary:
  usable = [i for i in batch.ids if i is not None]
  names = encode_ids(usable)
  counts = []
  for f in range(batch.lengths.shape[1]):
    values, number = np.unique(batch.lengths[:, f], return_counts=True)
    counts.append({int(v): int(n) for v, n in zip(values, number) if v >= 0})
  hashes = id_hash(names)
  keep = np.argsort(hashes, kind='stable')[:ID_SAMPLE_SIZE]
  return Summary(len(batch.ids), counts,
                 _bottom(zip(hashes[keep].tolist(), names[keep].tolist()),
                         ID_SAMPLE_SIZE))


def merge_summaries(summaries) -> Summary:
  num_rows, counts, sample = 0, None, []
  for summary in summaries:
    num_rows += summary.num_rows
    if not summary.length_counts:  # An empty accumulator.
      continue
    if counts is None:
      counts = [collections.Counter() for _ in summary.length_counts]
    for total, part in zip(counts, summary.length_counts):
      total.update(part)
    sample = _bottom(sample + list(summary.id_sample), ID_SAMPLE_SIZE)
  return Summary(num_rows, [dict(c) for c in counts or []], sample)


def num_shards(num_rows, dim, num_shards_param, budget_bytes):
  """Node (and edge file) shards: `num_shards_param` or one per
  NODES_PER_SHARD nodes, raised so that one shard's vectors take at most a
  quarter of the per-worker memory budget."""
  wanted = num_shards_param or max(1, min(MAX_DEFAULT_SHARDS,
                                          num_rows // NODES_PER_SHARD))
  return max(wanted, math.ceil(num_rows * dim * 4 / (budget_bytes / 4)))


def plan(summary: Summary, features, num_shards_param, budget_bytes):
  """Dimensions (per feature, the most common length; ties go to the larger)
  and id boundaries of the node shards: shard s holds the ids in
  [boundaries[s - 1], boundaries[s])."""
  dims = []
  for feature, counts in zip(features, summary.length_counts):
    if not counts:
      raise ValueError(f'embedding feature {feature!r} is in none of the '
                       'examples')
    dims.append(max(counts, key=lambda d: (counts[d], d)))
  shards = num_shards(summary.num_rows, sum(dims), num_shards_param,
                      budget_bytes)
  sample = np.array(sorted(i for _, i in summary.id_sample), dtype='S')
  # Fewer sampled ids than shards: some shards stay empty.
  boundaries = (sample[(np.arange(1, shards) * len(sample)) // shards]
                if len(sample) else np.zeros(shards - 1, 'S1'))
  return Plan(dims, boundaries)


def _matrix(batch, dims, keep):
  """[kept rows, sum(dims)] from a batch's per-feature flat values."""
  columns = []
  for f, d in enumerate(dims):
    lengths = np.maximum(batch.lengths[:, f], 0)
    offsets = np.cumsum(lengths) - lengths
    columns.append(batch.flats[f][offsets[keep][:, None] + np.arange(d)])
  return np.concatenate(columns, axis=1).astype(np.float32)


def validate(batch: EmbeddingBatch, dims, similarity):
  """(ids as bytes, prepared vectors, {rejection: ids (str) of the rows it
  left out}) of one batch."""
  unusable_id = np.equal(batch.ids, None)
  present = batch.lengths >= 0
  missing = ~present.all(axis=1) & ~unusable_id
  wrong_dim = ~missing & ~unusable_id & (batch.lengths != np.array(dims)).any(
      axis=1)
  keep = ~unusable_id & ~missing & ~wrong_dim
  vectors = _matrix(batch, dims, keep)
  ids = batch.ids[keep]
  vectors, usable = graph_core.prepare_vectors(vectors, similarity)
  nonfinite = ~np.isfinite(vectors).all(axis=1)
  bad = ~usable & ~nonfinite
  rejected = {
      'unusable_id': batch.ids[unusable_id],  # Named in the log when read.
      'missing_embedding': batch.ids[missing],
      'wrong_dimension': batch.ids[wrong_dim],
      'non_finite_embedding': ids[nonfinite],
      'zero_embedding': ids[bad] if similarity == graph_core.COSINE else
                        ids[:0],
      'embedding_too_large': ids[bad] if similarity == graph_core.DOT else
                             ids[:0],
  }
  return encode_ids(ids[usable]), vectors[usable], rejected


def pieces(count, item_bytes):
  """Slices of `count` items of `item_bytes` each, ELEMENT_BYTES a slice."""
  step = max(1, ELEMENT_BYTES // max(1, item_bytes))
  for start in range(0, count, step):
    yield slice(start, min(count, start + step))


def runs(keys, item_bytes=None):
  """(key, positions) for each distinct key, the positions in input order,
  in pieces of at most ELEMENT_BYTES (whole runs without `item_bytes`)."""
  if not len(keys):
    return
  order = np.argsort(keys, kind='stable')
  ordered = keys[order]
  bounds = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
  for a, b in zip(bounds[:-1], bounds[1:]):
    if item_bytes is None:
      yield ordered[a], order[a:b]
      continue
    for piece in pieces(b - a, item_bytes):
      yield ordered[a], order[a:b][piece]


def route(ids, vectors, boundaries, directory):
  """(shard, Run) for each shard the rows fall in."""
  shards = np.searchsorted(boundaries, ids, side='right')
  for shard, run in store_runs(directory, 'routed', shards, ids=ids,
                               vectors=vectors):
    yield int(shard), run


def sort_shard(runs_of_shard, derived_prefix, id_feature, splits):
  """One shard's routed Runs -> (ids, vectors) sorted by id; duplicate ids
  (all in one shard, as shards are id ranges) are an error."""
  rows = load_runs(runs_of_shard)
  ids, vectors = rows['ids'], rows['vectors']
  order = np.argsort(ids, kind='stable')
  ids, vectors = ids[order], np.ascontiguousarray(vectors[order])
  duplicated = sorted(set(decode_ids(ids[1:][ids[1:] == ids[:-1]])))
  if duplicated and all(d.startswith(derived_prefix) for d in duplicated):
    raise ValueError(
        f'{len(duplicated)} examples of splits {splits} have neither an id '
        f'feature '
        f'{id_feature!r} nor different bytes from another example (identical '
        f'records), e.g. {duplicated[:5]}; graph nodes must be unique: give '
        'the examples ids or drop the copies')
  if duplicated:
    raise ValueError(
        f'{len(duplicated)} duplicate example ids in splits {splits}, e.g. '
        f'{duplicated[:5]}; '
        f'graph nodes must be unique: fix the {id_feature!r} feature')
  return ids, vectors


# --- Files ------------------------------------------------------------------


def _open(path, mode):
  """A built-in file for a local path, else tf.io.gfile's (gs://, hdfs://,
  s3:// ...): a gfile open, seek and read of 2 KB take about 50 us of
  Python wrappers, a built-in file's 5 us, and a partition-mode worker
  reads a run from many files (about 6 s of gfile calls at 1M nodes)."""
  if '://' in path:
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)  # pylint: disable=unspecified-encoding


def store_arrays(directory, prefix, **arrays) -> str:
  """Writes numpy `arrays` to a new .npz file in `directory`; its path."""
  path = os.path.join(directory, f'{prefix}-{uuid.uuid4().hex}.npz')
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)  # Callers pass no object arrays: no pickle.
  with _open(path, 'wb') as f:
    f.write(buffer.getvalue())
  return path


# Rows that go through a shuffle travel as files: a GroupByKey carries only
# a Run, so no key's values (Flink pre-combines them into one record, whose
# limit is its sort buffer, ~11 MB here) and no worker's heap grow with the
# data. A Run: rows of one key at `offset` of the file at `path`, field by
# field; fields: ((name, dtype, row shape, count), ...).
Run = collections.namedtuple('Run', ['path', 'offset', 'fields'])


def store_runs(directory, prefix, keys, **columns):
  """The rows of `columns` (arrays of one length) grouped by `keys`, in one
  new file; (key as a Python scalar, Run) for each distinct key."""
  if not len(keys):
    return []
  path = os.path.join(directory, f'{prefix}-{uuid.uuid4().hex}.runs')
  found, offset, pending, written = [], 0, [], 0
  with _open(path, 'wb') as f:
    for key, rows in runs(keys):
      fields, start = [], offset
      for name, column in columns.items():
        data = np.ascontiguousarray(column[rows])
        if data.nbytes >= _WRITE_BYTES:  # alone: no run held twice over
          f.write(b''.join(pending))
          f.write(data.tobytes())
          pending, written = [], offset + data.nbytes
        else:
          pending.append(data.tobytes())
        offset += data.nbytes
        fields.append((name, data.dtype.str, data.shape[1:], len(rows)))
      found.append((key.item(), Run(path, start, tuple(fields))))
      if offset - written >= _WRITE_BYTES:  # few gfile calls
        f.write(b''.join(pending))
        pending, written = [], offset
    f.write(b''.join(pending))
  return found


_WRITE_BYTES = 8 << 20


def load_runs(stored_runs):
  """Runs of one key's rows -> {name: the rows of all, concatenated} (in no
  particular order)."""
  by_path = collections.defaultdict(list)
  for run in stored_runs:
    by_path[run.path].append(run)
  parts = collections.defaultdict(list)
  for path, found in sorted(by_path.items()):
    with _open(path, 'rb') as f:
      # One read a stretch of runs at most _RUN_GAP_BYTES apart, not one a
      # field: a read costs about 20 us however small on gfile, and the
      # profile of 1M nodes had ~10^5 of them.
      for start, stretch in _stretches(found):
        f.seek(start)
        data = f.read(stretch[-1][0] - start)
        for _, run, fields in stretch:
          at = run.offset - start
          for name, dtype, shape, values in fields:
            parts[name].append(np.frombuffer(data, dtype, values, at).reshape(
                shape))
            at += values * dtype.itemsize
  return {name: np.concatenate(p) for name, p in parts.items()}


_RUN_GAP_BYTES = 1 << 16


@functools.lru_cache(maxsize=None)
def _dtype(name):
  return np.dtype(name)


def _stretches(found):
  """Runs of one file as (start, [(end, run, fields), ...]) stretches, in
  offset order, a stretch's runs at most _RUN_GAP_BYTES apart; fields:
  (name, dtype, array shape, values) of each of the run's fields."""
  stretches = []
  for run in sorted(found, key=lambda r: r.offset):
    fields, end = [], run.offset
    for name, dtype, shape, count in run.fields:
      dtype, values = _dtype(dtype), count * math.prod(shape)
      fields.append((name, dtype, (count,) + tuple(shape), values))
      end += values * dtype.itemsize
    if stretches and run.offset - stretches[-1][1][-1][0] <= _RUN_GAP_BYTES:
      stretches[-1][1].append((end, run, fields))
    else:
      stretches.append((run.offset, [(end, run, fields)]))
  return stretches


def run_batches(stored_runs, max_rows):
  """Runs in lists of at most `max_rows` rows (a longer run alone)."""
  batch, rows = [], 0
  for run in stored_runs:
    count = run.fields[0][3]
    if batch and rows + count > max_rows:
      yield batch
      batch, rows = [], 0
    batch.append(run)
    rows += count
  if batch:
    yield batch


def load_arrays(path):
  with _open(path, 'rb') as f:
    stored = np.load(io.BytesIO(f.read()))
    return {k: stored[k] for k in stored.files}


def concat_batches(batches) -> EmbeddingBatch:
  """EmbeddingBatches of one feature layout as one."""
  return EmbeddingBatch(
      np.concatenate([b.ids for b in batches]),
      np.concatenate([b.lengths for b in batches]),
      [np.concatenate([b.flats[f] for b in batches])
       for f in range(len(batches[0].flats))])


def store_batch(batch, directory) -> str:
  """Stores an EmbeddingBatch as a new file in `directory`; its path."""
  unusable = np.equal(batch.ids, None)
  return store_arrays(
      directory, 'batch', ids=np.where(unusable, '', batch.ids).astype(str),
      unusable=unusable, lengths=batch.lengths,
      **{f'flat{f}': flat for f, flat in enumerate(batch.flats)})


def load_batch(path) -> EmbeddingBatch:
  stored = load_arrays(path)
  ids = stored['ids'].astype(object)
  ids[stored['unusable']] = None
  lengths = stored['lengths']
  return EmbeddingBatch(ids, lengths, [stored[f'flat{f}']
                                       for f in range(lengths.shape[1])])


class FileCache:
  """The .npz files this process loaded last, up to `capacity` bytes: the
  steps of a worker read the same few shard or group files many times."""

  def __init__(self):
    self._lock = threading.RLock()
    self._files = collections.OrderedDict()

  def load(self, path, capacity):
    with self._lock:
      arrays = self._files.pop(path, None)
      if arrays is None:
        arrays = load_arrays(path)
      self._files[path] = arrays
      total = 0
      for key in list(reversed(self._files)):  # newest first
        total += sum(a.nbytes for a in self._files[key].values())
        if total > capacity and key != path:
          del self._files[key]
      return arrays

  def clear(self):
    with self._lock:
      self._files.clear()


CACHE = FileCache()


class Layout(collections.namedtuple('Layout',
                                    ['files', 'offsets', 'id_bytes'])):
  """The stored node shards: files[s] (None: empty) and offsets[s], the
  index of shard s's first node (offsets[-1]: the number of nodes);
  id_bytes: the widest id."""

  @classmethod
  def of(cls, shard_files, num_shards):
    files, counts = [None] * num_shards, np.zeros(num_shards, np.int64)
    for f in shard_files:
      files[f.shard], counts[f.shard] = f.path, f.count
    return cls(tuple(files), np.r_[0, np.cumsum(counts)],
               max([f.id_bytes for f in shard_files] + [1]))

  @property
  def num_nodes(self):
    return int(self.offsets[-1])

  @property
  def num_shards(self):
    return len(self.files)

  def shard_of(self, index):
    return np.searchsorted(self.offsets, index, side='right') - 1

  def nodes(self, shard, capacity):
    """(node indices, ids as bytes, vectors) of one shard."""
    stored = CACHE.load(self.files[shard], capacity)
    start = self.offsets[shard]
    return (np.arange(start, start + len(stored['ids'])), stored['ids'],
            stored['vectors'])
