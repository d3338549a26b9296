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

EDGE_FILE_GLOB = '*.tsv'
STATS_FILE = 'stats.json'


def edge_shard_name(index, num_shards):
  return f'edges-{index:05d}-of-{num_shards:05d}.tsv'


# % (source, target, weight), the ids as UTF-8 bytes: formatting bytes skips
# decoding every id (a third of the writing time).
EDGE_LINE = b'%b\t%b\t%f\n'
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
