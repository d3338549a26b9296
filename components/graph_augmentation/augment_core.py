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
adds weight to the seed itself); examples without an id are kept, without
neighbors; duplicate ids keep every seed copy and pick one neighbor copy
deterministically. All of these are counted by the executor.
"""
import heapq
import math
from typing import Iterable, List, Optional, Sequence, Tuple

from tensorflow.core.example import example_pb2

from tfx_nsl import graph_io

# Feature names NSL's pack_nbrs writes and nsl.configs.GraphNeighborConfig
# reads by default (prefix 'NL_nbr_', weight suffix '_weight').
NBR_PREFIX = 'NL_nbr_'
NBR_WEIGHT_SUFFIX = '_weight'
NUM_NBRS_FEATURE = 'NL_num_nbrs'
# Beyond NSL: with `unlabeled_as_seeds`, every example written to a seed split
# carries this int64 feature, 1 for examples from a seed split and 0 for
# examples of the unlabeled split; the Trainer masks the supervised loss of 0s.
LABELED_FEATURE = 'NL_labeled'

# (weight, neighbor id, neighbor payload); the tuple order is the ranking.
Neighbor = Tuple[float, str, bytes]


def nbr_feature_name(index: int, feature: str) -> str:
  return f'{NBR_PREFIX}{index}_{feature}'


def nbr_weight_name(index: int) -> str:
  return f'{NBR_PREFIX}{index}{NBR_WEIGHT_SUFFIX}'


def parse_example(serialized: bytes) -> example_pb2.Example:
  return example_pb2.Example.FromString(serialized)


def example_id(example: example_pb2.Example, id_feature: str) -> Optional[str]:
  """The example's id as a string, or None if it has no usable id.

  Graph files name nodes by strings, so a bytes id is decoded (UTF-8, as
  pack_nbrs does) and an int64 id is written in decimal. Anything else (no
  feature, not exactly one value, floats, undecodable bytes) is no id.
  """
  features = example.features.feature
  if id_feature not in features:
    return None
  feature = features[id_feature]
  kind = feature.WhichOneof('kind')
  if kind == 'bytes_list' and len(feature.bytes_list.value) == 1:
    try:
      return feature.bytes_list.value[0].decode('utf-8')
    except UnicodeDecodeError:
      return None
  if kind == 'int64_list' and len(feature.int64_list.value) == 1:
    return str(feature.int64_list.value[0])
  return None


def parse_edge(line: str, where: str = '') -> Tuple[str, str, float]:
  """(source, target, weight) of one TSV line; ValueError if malformed."""
  source, target, weight = graph_io.parse_edge_line(line, where)
  if not math.isfinite(weight):
    # NaN would make the neighbor order undefined.
    raise ValueError(f'{where}: weight {weight!r} is not finite, in '
                     f'{line.rstrip()!r}')
  return source, target, weight


def directed_edges(source: str, target: str, weight: float,
                   add_undirected_edges: bool):
  """((source, target), (weight, from_input)) pairs for one input edge.

  `from_input` is 1 for the edge as written and 0 for its added reverse, so
  that merging can tell duplicate input lines from reverse edges that meet an
  existing edge. Callers drop self-loops first.
  """
  yield (source, target), (weight, 1)
  if add_undirected_edges:
    yield (target, source), (weight, 0)


def merge_edge_values(values: Iterable[Tuple[float, int]]) -> Tuple[float, int]:
  """Merges the values of one (source, target) pair: max weight, input count.

  Associative and commutative, so Beam may apply it in any grouping.
  """
  best = -math.inf
  count = 0
  for weight, from_input in values:
    best = max(best, weight)
    count += from_input
  return best, count


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


def top_merge(accumulators, k: int):
  count = 0
  candidates = []
  for seen, heap in accumulators:
    count += seen
    candidates.extend(heap)
  best = heapq.nlargest(k, candidates)
  heapq.heapify(best)
  return [count, best]


def top_extract(accumulator) -> Tuple[int, List[Neighbor]]:
  """(candidates seen, best first) from an accumulator."""
  return accumulator[0], sorted(accumulator[1], reverse=True)


def rank_neighbors(candidates: Iterable[Neighbor], k: int) -> List[Neighbor]:
  """pack_nbrs' order: (weight, id) descending, the first `k`."""
  return sorted(candidates, reverse=True)[:k]


def neighbor_payload(serialized: bytes, features: Optional[Sequence[str]]
                    ) -> Tuple[bytes, List[str]]:
  """What a neighbor contributes: its features, or the chosen subset.

  Returns (serialized tf.Example, names of requested features it lacks).
  With `features` None the example is passed on unchanged (pack_nbrs copies
  every feature, the id included).
  """
  if features is None:
    return serialized, []
  source = parse_example(serialized).features.feature
  subset = example_pb2.Example()
  missing = []
  for name in features:
    if name in source:
      subset.features.feature[name].CopyFrom(source[name])
    else:
      missing.append(name)
  return subset.SerializeToString(deterministic=True), missing


def pick_example(candidates: Iterable[Tuple[int, bytes]]) -> bytes:
  """One example among those sharing an id: seed splits first, then bytes.

  Candidates are (preference, serialized); a lower preference wins, which
  puts seed-split examples first as pack_nbrs does. The bytes break ties so
  that the choice never depends on the order a runner delivers them in.
  """
  return min(candidates)[1]


def augment(seed: bytes, neighbors: Sequence[Neighbor],
            labeled: Optional[bool] = None) -> bytes:
  """The seed example with its neighbors' features merged in, serialized.

  `neighbors` are already ranked. The weight is written before the copied
  features, as in pack_nbrs (so a neighbor feature named 'weight' wins there
  too). `labeled`, if not None, sets LABELED_FEATURE.
  """
  example = parse_example(seed)
  features = example.features.feature
  features[NUM_NBRS_FEATURE].int64_list.value.append(len(neighbors))
  for index, (weight, _, payload) in enumerate(neighbors):
    features[nbr_weight_name(index)].float_list.value.append(weight)
    for name, value in parse_example(payload).features.feature.items():
      features[nbr_feature_name(index, name)].CopyFrom(value)
  if labeled is not None:
    features[LABELED_FEATURE].int64_list.value[:] = [int(labeled)]
  return example.SerializeToString(deterministic=True)
