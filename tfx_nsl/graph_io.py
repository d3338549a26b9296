"""The Graph artifact's payload: NSL's TSV edge format, sharded, plus stats.

Layout under a Graph artifact's uri:
  edges-00000-of-00004.tsv ...   lines `source<TAB>target<TAB>weight`
  stats.json                     graph statistics (see GraphBuilder)

Any file matching `*.tsv` is read as edges, so a user's own NSL graph file
brought in with `tfx.dsl.Importer` (a folder holding e.g. `graph.tsv`) works
too. Weights are written with '%f', as `nsl.tools.build_graph` does.
"""
import json
import os

import numpy as np

EDGE_FILE_GLOB = '*.tsv'
STATS_FILE = 'stats.json'


def edge_shard_name(index, num_shards):
  return f'edges-{index:05d}-of-{num_shards:05d}.tsv'


# % (source, target, weight), the ids as UTF-8 bytes: formatting bytes skips
# decoding every id (a third of the writing time).
EDGE_LINE = b'%b\t%b\t%f\n'
# Below this magnitude a float32 weight times 1e6 is an exact float64
# integer after rounding (24 + 14 significant bits; 1e6 = 2**6 * 15625).
_SCALED_EXACTLY = 2.0**53 / 1e6


def edge_lines(sources, targets, weights):
  """The TSV lines of parallel arrays (ids as UTF-8 bytes without NUL, as
  node_id makes them: arrow ends a numpy 'S' value at its first NUL;
  float32 weights): the bytes b''.join(EDGE_LINE % row for row in
  zip(...)) gives, built by arrow kernels. '%f' is the value rounded half
  to even to 6 decimals, which np.rint of weight * 1e6 (exact for float32)
  is too; a Python format per line took 0.7 us, 7 s of a 1M-node top-10
  graph."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
  weights = np.asarray(weights)
  if not len(weights):
    return b''
  if weights.dtype != np.float32 or not (
      np.abs(weights, dtype=np.float64) < _SCALED_EXACTLY).all():
    # Other dtypes, NaN, infinities and huge dot products: Python's format.
    return b''.join(map(EDGE_LINE.__mod__, zip(
        np.asarray(sources).tolist(), np.asarray(targets).tolist(),
        weights.tolist())))
  whole, fraction = np.divmod(
      np.abs(np.rint(weights.astype(np.float64) * 1e6)).astype(np.int64),
      1_000_000)
  binary = lambda a: pa.array(a).cast(pa.large_binary())  # may be chunked
  text = lambda a: pc.cast(pa.array(a), pa.large_string()).cast(
      pa.large_binary())
  literal = lambda b: pa.scalar(b, pa.large_binary())
  tab = literal(b'\t')
  lines = pc.binary_join_element_wise(
      binary(sources), tab, binary(targets), tab,
      # '%f' keeps the sign of -0.0 and of what rounds to it.
      pc.if_else(pa.array(np.signbit(weights)), literal(b'-'), literal(b'')),
      text(whole), literal(b'.'),
      pc.utf8_lpad(pc.cast(pa.array(fraction), pa.large_string()), 6,
                   '0').cast(pa.large_binary()),
      literal(b'\n'), literal(b''))
  if isinstance(lines, pa.ChunkedArray):
    lines = lines.combine_chunks()
  offsets = np.frombuffer(lines.buffers()[1], np.int64)
  start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
  # Sliced first: one copy of the text, not the whole buffer and a slice.
  return lines.buffers()[2].slice(start, end - start).to_pybytes()


DERIVED_ID_PREFIX = 'sha256-'


def parse_edge_line(line, where=''):
  """(source, target, weight) from a TSV line; weight defaults to 1.0."""
  parts = line.rstrip('\r\n').split('\t')
  if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
    raise ValueError(f'{where}: expected source<TAB>target[<TAB>weight], got '
                     f'{line.rstrip()!r}')
  try:
    weight = float(parts[2]) if len(parts) == 3 else 1.0
  except ValueError:
    raise ValueError(f'{where}: weight {parts[2]!r} is not a number') from None
  return parts[0], parts[1], weight


def edge_files(uri):
  """Sorted edge files of a Graph artifact (or any folder of NSL TSVs)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(tf.io.gfile.glob(os.path.join(uri, EDGE_FILE_GLOB)))
  if not files:
    raise ValueError(f'no edge files ({EDGE_FILE_GLOB}) under graph {uri}')
  return files


def write_stats(uri, stats):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(os.path.join(uri, STATS_FILE), 'w') as f:
    json.dump(stats, f, indent=2, sort_keys=True)


def read_stats(uri):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = os.path.join(uri, STATS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def node_id(values, serialized):
  """The graph node name of an example, from its id feature's values.

  One bytes value is decoded (UTF-8, as pack_nbrs does), one int64 value is
  written in decimal; no value at all means the id is derived from the
  example's bytes (docs/design.md), the same way in GraphBuilder and
  GraphAugmentation so their graphs join (when both read the same records).
  Anything else (several values, floats, undecodable bytes, the empty
  string, a tab or line break, which the TSV format cannot hold, or a NUL
  character, which numpy's fixed-width strings drop) is no usable id: None.
  """
  if not values:
    return derive_example_id(serialized)
  if len(values) != 1:
    return None
  value = values[0]
  if isinstance(value, bytes):
    try:
      text = value.decode('utf-8')
    except UnicodeDecodeError:
      return None
    if not text or any(c in text for c in '\t\n\r\x00'):
      return None
    return text
  if isinstance(value, int):
    return str(value)
  return None


def describe_id(values):
  """An id feature's values for a message about an unusable id."""
  return f'{list(values)[:3]}' + (' ...' if len(values) > 3 else '')


def _id_values(example, id_feature):
  feature = (example.features.feature[id_feature]
             if id_feature in example.features.feature else None)
  kind = feature.WhichOneof('kind') if feature is not None else None
  return list(getattr(feature, kind).value) if kind else []


def example_node_id(example, id_feature, serialized):
  """(node_id, whether it was derived) of a parsed tf.train.Example;
  `serialized` is its record."""
  values = _id_values(example, id_feature)
  return node_id(values, serialized), not values


def describe_example_id(example, id_feature):
  """describe_id of a parsed tf.train.Example's id feature."""
  return describe_id(_id_values(example, id_feature))


def derive_example_id(serialized):
  """Id of an example without an id feature: a digest of its bytes.

  Deterministic (docs/design.md: never a random id), so reruns give the same
  graph and GraphAugmentation finds the same node.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  return DERIVED_ID_PREFIX + hashlib.sha256(serialized).hexdigest()[:24]
