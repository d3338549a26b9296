"""GraphAugmentation logic as plain functions: no TFX, no Beam.

The rules follow `nsl.tools.pack_nbrs` (NSL 1.4.0) so that our output equals
its output feature for feature:

* Edges are `source<TAB>target[<TAB>weight]` (weight 1.0 when absent); the
  neighbors of a node are the targets of its out-edges.
* A repeated (source, target) pair keeps its largest weight. With
  `add_undirected_edges`, each edge is also added reversed, again keeping the
  largest weight per pair.
* Targets without an example among the neighbor examples are skipped *before*
  the top neighbors are chosen, so they never take a slot.
* The top `max_neighbors` are those with the largest (weight, id) pairs:
  weight descending, ties broken by the larger id (string order).
* Neighbor `i` contributes `NL_nbr_<i>_weight` (float) and a copy of each of
  its features as `NL_nbr_<i>_<feature>` (the id feature included);
  `NL_num_nbrs` (int64) says how many neighbors were merged.
* An id present both among seeds and among other neighbor examples resolves
  to the seed's example.

Where we differ (pack_nbrs has no answer or crashes): self-loops are dropped
(pack_nbrs would make a node its own neighbor, a zero-distance term that only
adds weight to the seed itself); examples whose id is unusable are kept,
without neighbors (examples without the id feature are named by a digest of
their bytes, as GraphBuilder names them); duplicate ids keep every seed copy
and pick one neighbor copy
deterministically. All of these are counted by the executor.
"""
import heapq
import math
import struct
from typing import Iterable, List, Optional, Sequence, Tuple

from tensorflow.core.example import example_pb2
from tensorflow.core.example import feature_pb2

from tfx_nsl import constants
from tfx_nsl import graph_io

# Feature names NSL's pack_nbrs writes and nsl.configs.GraphNeighborConfig
# reads by default.
NBR_PREFIX = constants.NBR_PREFIX
NBR_WEIGHT_SUFFIX = constants.NBR_WEIGHT_SUFFIX
NUM_NBRS_FEATURE = 'NL_num_nbrs'
# Beyond NSL: with `unlabeled_as_seeds`, every example written to a seed split
# carries this int64 feature, 1 for examples from a seed split and 0 for
# examples of the unlabeled split; the Trainer masks the supervised loss of 0s.
LABELED_FEATURE = 'NL_labeled'

# What a neighbor contributes, as the executor carries it: its copied features
# as (name, serialized tf.train.Feature) pairs sorted by name, so that merging
# them into a seed needs no parsing.
Entries = Tuple[Tuple[bytes, bytes], ...]
# (weight, neighbor id, its entries); the tuple order is the ranking.
Neighbor = Tuple[float, str, Entries]


def nbr_feature_name(index: int, feature: str) -> str:
  return f'{NBR_PREFIX}{index}_{feature}'


def nbr_weight_name(index: int) -> str:
  return f'{NBR_PREFIX}{index}{NBR_WEIGHT_SUFFIX}'


def parse_example(serialized: bytes) -> example_pb2.Example:
  return example_pb2.Example.FromString(serialized)


def parse_edge(line: str, where: str = '') -> Tuple[str, str, float]:
  """(source, target, weight) of one TSV line; ValueError if malformed."""
  source, target, weight = graph_io.parse_edge_line(line, where)
  if not math.isfinite(weight):
    # NaN would make the neighbor order undefined.
    raise ValueError(f'{where}: weight {weight!r} is not finite, in '
                     f'{line.rstrip()!r}')
  return source, target, weight


# A bounded top-k accumulator: [number of candidates seen, min-heap of the best
# `k` (weight, id, payload) tuples]. Ids are unique per source once edges are
# merged, so tuples never compare payloads.


def top_create():
  return [0, []]


def top_add(accumulator, candidate: Neighbor, k: int):
  accumulator[0] += 1
  heap = accumulator[1]
  if len(heap) < k:
    heapq.heappush(heap, candidate)
  elif candidate > heap[0]:
    heapq.heapreplace(heap, candidate)
  return accumulator


def top_extract(accumulator) -> Tuple[int, List[Neighbor]]:
  """(candidates seen, best first) from an accumulator."""
  return accumulator[0], sorted(accumulator[1], reverse=True)


def payload_entries(example: example_pb2.Example,
                    features: Optional[Sequence[str]]
                   ) -> Tuple[Entries, List[str]]:
  """What a neighbor contributes: all its features (pack_nbrs copies every
  feature, the id included) or the chosen subset, as sorted (name, serialized
  Feature) pairs.

  Returns (entries, names of requested features it lacks).
  """
  source = example.features.feature
  if features is None:
    names = sorted(source)
    missing = []
  else:
    names = sorted(n for n in set(features) if n in source)
    missing = [n for n in features if n not in source]
  return tuple((n.encode('utf-8'), source[n].SerializeToString(
      deterministic=True)) for n in names), missing


def entries_to_example(entries: Entries) -> bytes:
  """`entries` as a serialized tf.Example (deterministic serialization);
  breaks ties between duplicate neighbor ids (join_core.pick_neighbor)."""
  example = example_pb2.Example()
  features = example.features.feature
  for name, value in entries:
    features[name.decode('utf-8')].ParseFromString(value)
  return example.SerializeToString(deterministic=True)


def has_neighbor_features(example: example_pb2.Example) -> bool:
  """Whether a seed already has features that augmenting writes to."""
  return any(name.startswith(NBR_PREFIX) or name == NUM_NBRS_FEATURE
             or name == LABELED_FEATURE for name in example.features.feature)


def augment(seed: bytes, neighbors: Sequence[Neighbor],
            labeled: Optional[bool] = None) -> bytes:
  """The seed example with its neighbors' features merged in, serialized.

  `neighbors` are already ranked. The weight is written before the copied
  features, as in pack_nbrs (so a neighbor feature named 'weight' wins there
  too). `labeled`, if not None, sets LABELED_FEATURE. The path for seeds
  that already have neighbor features, and the reference `augment_fast` is
  tested against.
  """
  example = parse_example(seed)
  features = example.features.feature
  features[NUM_NBRS_FEATURE].int64_list.value.append(len(neighbors))
  for index, (weight, _, entries) in enumerate(neighbors):
    features[nbr_weight_name(index)].float_list.value.append(weight)
    for name, value in entries:
      features[nbr_feature_name(index, name.decode('utf-8'))].ParseFromString(
          value)
  if labeled is not None:
    features[LABELED_FEATURE].int64_list.value[:] = [int(labeled)]
  return example.SerializeToString(deterministic=True)


# Wire format, for augment_fast. Serialized protobuf messages concatenate as
# a merge: a later `features` field merges into the earlier one, and a later
# map entry replaces an earlier one with the same key.


def _varint(value: int) -> bytes:
  if value < 0x80:
    return bytes((value,))
  out = bytearray()
  while value >= 0x80:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _length_delimited(tag: bytes, data: bytes) -> bytes:
  return tag + _varint(len(data)) + data


def int64_feature_bytes(value: int) -> bytes:
  """A serialized Feature holding one non-negative int64."""
  return _length_delimited(b'\x1a', _length_delimited(b'\x0a', _varint(value)))


def float_feature_bytes(value: float) -> bytes:
  """A serialized Feature holding one float, rounded to float32 as protobuf."""
  try:
    packed = struct.pack('<f', value)
  except OverflowError:  # Beyond float32; let protobuf round it (to inf).
    return feature_pb2.Feature(float_list=feature_pb2.FloatList(
        value=[value])).SerializeToString()
  return b'\x12\x06\x0a\x04' + packed


def _entry(name: bytes, value: bytes) -> bytes:
  """One map entry of Features.feature, with its field tag and length."""
  n, v = len(name), len(value)
  body = b''.join((b'\x0a', bytes((n,)) if n < 0x80 else _varint(n), name,
                   b'\x12', bytes((v,)) if v < 0x80 else _varint(v), value))
  size = len(body)
  return b''.join(
      (b'\x0a', bytes((size,)) if size < 0x80 else _varint(size), body))


def features_chunk(entries: Iterable[Tuple[bytes, bytes]]) -> bytes:
  """A serialized Example holding `entries` ((name, Feature bytes) pairs)."""
  return _length_delimited(
      b'\x0a', b''.join([_entry(name, value) for name, value in entries]))


_NUM_NBRS_KEY = NUM_NBRS_FEATURE.encode()
_LABELED_KEY = LABELED_FEATURE.encode()


def augment_fast(seed: bytes, neighbors: Sequence[Tuple[float, str, Entries]],
                 labeled: Optional[bool] = None,
                 seed_has_neighbor_features: bool = False) -> bytes:
  """`augment` by appending the new features to the seed's bytes.

  The result parses to the same example as `augment`'s. A seed that already
  has NL_nbr_*, NL_num_nbrs or NL_labeled features (augmented twice) takes
  the reference path: pack_nbrs appends to some of them, and a map key must
  not appear twice in the serialized record.
  """
  if seed_has_neighbor_features:
    return augment(seed, neighbors, labeled)
  # A dict, as a later value replaces an earlier one with the same name (a
  # neighbor feature called 'weight'); a map must not repeat keys on the wire.
  entries = {_NUM_NBRS_KEY: int64_feature_bytes(len(neighbors))}
  for index, (weight, _, payload) in enumerate(neighbors):
    prefix = f'{NBR_PREFIX}{index}_'.encode()
    entries[nbr_weight_name(index).encode()] = float_feature_bytes(weight)
    for name, value in payload:
      entries[prefix + name] = value
  if labeled is not None:
    entries[_LABELED_KEY] = int64_feature_bytes(int(labeled))
  return seed + features_chunk(entries.items())
