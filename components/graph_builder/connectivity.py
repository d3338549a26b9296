"""Connected components past one process's memory: contraction rounds.

The graph statistics' components come from the write shards' spanning
forests. While a union-find over every node fits the memory budget
(graph_core.component_stats), one process does it. Past that, a fixed
number of contraction rounds runs on the workers first, each over buckets
of nodes (a hash of the node, so a bucket's share of the work does not
depend on how ids were given out):

  1. each node takes as its label the node of smallest priority (priority()
     says which) among itself and its neighbours: a node and its label are
     adjacent, so merging them keeps every component;
  2. each pair (u, v) becomes (label(u), label(v)); pairs within one label
     vanish and repeats are dropped;
  3. each label's weight is the sum of the weights (original nodes) of the
     nodes it took in.

A node left without pairs is a finished component of its weight. What is
left after the rounds (none to a few percent of the nodes on the test
graphs of tests/test_graph_builder.py) goes through a union-find in one
process, within the budget, or the components are left out with a
warning. The functions above the Beam steps are pure functions of numpy
arrays; executor.py wires the steps into the pipeline.
"""
import collections

import apache_beam as beam
import numpy as np

from tfx_nsl.components.graph_builder import corpus
from tfx_nsl.components.graph_builder import graph_core

# Rounds run on the workers before the union-find of what is left.
CONTRACTION_ROUNDS = 4
# Bytes a forest edge (a pair both ways, int64 ends) and a weighted node take
# while a bucket is contracted or relabelled: the arrays, their sort orders
# and sorted copies. Measured (tracemalloc): 1M edges and 1M nodes in one
# bucket peaked at 151 MiB contracting and 183 MiB relabelling, beside
# their 48 MB of loaded inputs; these give 244 MiB. A bucket holds all the
# pairs of its nodes, so one node with more pairs than a bucket's share (a
# hub that many shards' forests link to) makes its bucket pass the budget.
BUCKET_BYTES_PER_PAIR = 160
BUCKET_BYTES_PER_NODE = 96
# Bytes a residue node and a residue pair (one direction) take in finish()
# and summarize(): the loaded int64 arrays, their concatenation, unique()
# with its inverse, the forest's sort and sparse matrix copies. Measured
# (tracemalloc): 1M nodes and 2M pairs peaked at 205 MiB; these give 252.
RESIDUE_BYTES_PER_NODE = 72
RESIDUE_BYTES_PER_PAIR = 96

# A round's pairs, both directions, keyed by the bucket of `src`; and nodes
# with their weights (unique and ascending once merge_weights ran).
Pairs = collections.namedtuple('Pairs', ['src', 'tgt'])
Weights = collections.namedtuple('Weights', ['nodes', 'weights'])

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BUCKET_SALT = 0x5BD1E995


def _mix(values, salt):
  """splitmix64's finalizer of values + salt: a bijection of uint64, so
  distinct nodes never share a priority."""
  with np.errstate(over='ignore'):
    x = values.astype(np.uint64) + np.uint64(salt) * _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def priority(nodes, round_index):
  """The first round's priority is the node itself: the forests are stars
  rooted at their smallest node, so each star folds into its root. Later
  rounds hash it: on a graph that follows the ids (neighbours at nearby
  ids, as sequences give), the smallest id would move each label only a
  few nodes a round."""
  if round_index == 0:
    return nodes.astype(np.uint64)
  return _mix(nodes, round_index)


def num_buckets(num_nodes, num_edges, budget_bytes):
  """Buckets such that one bucket's contraction fits the budget (the
  forests hold at most one pair per edge)."""
  need = (num_nodes * BUCKET_BYTES_PER_NODE +
          num_edges * BUCKET_BYTES_PER_PAIR)
  return max(1, -(-need // max(budget_bytes, 1)))


def bucket_of(nodes, buckets):
  return (_mix(nodes, _BUCKET_SALT) % np.uint64(buckets)).astype(np.int64)


def split_by_bucket(keys, buckets, *columns):
  """{bucket: (columns' rows whose key falls in it)}, buckets present only."""
  which = bucket_of(keys, buckets)
  order = np.argsort(which, kind='stable')
  which = which[order]
  starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]]) if len(
      which) else np.zeros(0, np.int64)
  ends = np.r_[starts[1:], len(which)].astype(np.int64)
  return {int(which[s]): tuple(c[order[s:e]] for c in columns)
          for s, e in zip(starts, ends)}


def forest_pairs(roots, members):
  """A spanning forest's (root, member) links as pairs in both directions."""
  return Pairs(np.r_[roots, members].astype(np.int64),
               np.r_[members, roots].astype(np.int64))


def node_weights(start, stop):
  """Every node of [start, stop) with weight 1: the first round's nodes."""
  nodes = np.arange(start, stop, dtype=np.int64)
  return Weights(nodes, np.ones(len(nodes), np.int64))


def merge_weights(parts):
  """Weights parts -> one Weights, nodes unique and ascending (weights of a
  node given twice added)."""
  parts = list(parts)
  if not parts:
    return Weights(np.zeros(0, np.int64), np.zeros(0, np.int64))
  nodes = np.concatenate([p.nodes for p in parts])
  weights = np.concatenate([p.weights for p in parts])
  unique, inverse = np.unique(nodes, return_inverse=True)
  return Weights(unique, np.bincount(inverse, weights=weights,
                                     minlength=len(unique)).astype(np.int64))


def merge_pairs(parts):
  """Pairs parts -> one Pairs without repeats or self-pairs."""
  parts = list(parts)
  if not parts:
    return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
  both = np.unique(np.stack([np.concatenate([p.src for p in parts]),
                             np.concatenate([p.tgt for p in parts])]), axis=1)
  keep = both[0] != both[1]
  return Pairs(both[0][keep], both[1][keep])


# What one bucket's contraction gives: the labels of its nodes that have
# pairs; the weights the labels take in (keyed by label); the requests that
# relabel each pair's other end (its tgt with the label of its src, one per
# undirected pair); and the weights of the components it finished.
Contracted = collections.namedtuple('Contracted', [
    'labels', 'label_weights', 'requests', 'finished'])


def _rows(table, keys, error):
  """The positions of `keys` in the sorted `table`; ValueError(error) where
  one is missing."""
  rows = np.searchsorted(table, keys)
  if (rows >= len(table)).any() or (table[np.minimum(
      rows, len(table) - 1)] != keys).any():
    raise ValueError(error)
  return rows


def contract_bucket(pairs, weights, round_index):
  """One bucket's step 1 and 3 and the first half of step 2 (module doc):
  `pairs` are the bucket's pairs (src in the bucket, both directions of
  every pair present in the round), `weights` its nodes."""
  nodes, node_weight = weights
  src, tgt = pairs
  has_pairs = np.zeros(len(nodes), bool)
  labels = nodes.copy()
  if len(src):
    rows = _rows(nodes, src, 'a pair names a node without a weight')
    has_pairs[rows] = True
    # Each source's neighbour of smallest priority, then against itself.
    order = np.lexsort((priority(tgt, round_index), rows))
    first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
    best, at = tgt[first], rows[first]
    better = priority(best, round_index) < priority(nodes[at], round_index)
    labels[at[better]] = best[better]
    # One request per undirected pair: its tgt learns the label of its src.
    once = src < tgt
    requests = Pairs(tgt[once], labels[rows[once]])
  else:
    requests = Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
  return Contracted(
      labels=Weights(nodes[has_pairs], labels[has_pairs]),
      label_weights=Weights(labels[has_pairs], node_weight[has_pairs]),
      requests=requests,
      finished=node_weight[~has_pairs])


def relabel_requests(requests, labels):
  """Step 2's second half, in the bucket of the requests' nodes: (label of
  the node, label it was sent) for each request, both directions; pairs
  within one label dropped."""
  node, other = requests
  if not len(node):
    return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
  rows = _rows(labels.nodes, node, 'a request names a node without a label')
  mine = labels.weights[rows]  # Weights(nodes, labels) here
  keep = mine != other
  return Pairs(np.r_[mine[keep], other[keep]], np.r_[other[keep], mine[keep]])


def finish(pairs, weights):
  """The components of what the rounds left ({pairs}, {weights}, each
  whole), as a list of their weights: a union-find over its nodes."""
  nodes, node_weight = weights
  if not len(nodes):
    return np.zeros(0, np.int64)
  parent = np.arange(len(nodes), dtype=np.int64)
  if len(pairs.src):
    a = np.searchsorted(nodes, pairs.src)
    b = np.searchsorted(nodes, pairs.tgt)
    joined, linked = graph_core.spanning_forest(a, b)
    parent[linked] = joined
  return np.bincount(parent, weights=node_weight).astype(np.int64)[
      np.bincount(parent) > 0]


def _concat(arrays):
  return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def contract_all(pairs, weights, rounds, buckets):
  """The rounds in one process, bucket by bucket as the workers run them:
  (finished weights of each round, the pairs and weights left). Tests use
  it against a plain union-find; executor.py runs the same steps in Beam."""
  empty = (np.zeros(0, np.int64),) * 2
  finished = []
  for round_index in range(rounds):
    pair_parts = split_by_bucket(pairs.src, buckets, pairs.src, pairs.tgt)
    weight_parts = split_by_bucket(weights.nodes, buckets, weights.nodes,
                                   weights.weights)
    out = {b: contract_bucket(Pairs(*pair_parts.get(b, empty)),
                              Weights(*weight_parts.get(b, empty)),
                              round_index)
           for b in sorted(set(pair_parts) | set(weight_parts))}
    finished.append(_concat([o.finished for o in out.values()]))
    requests = Pairs(_concat([o.requests.src for o in out.values()]),
                     _concat([o.requests.tgt for o in out.values()]))
    request_parts = split_by_bucket(requests.src, buckets, requests.src,
                                    requests.tgt)
    pairs = merge_pairs(relabel_requests(Pairs(*part), out[b].labels)
                        for b, part in request_parts.items())
    weights = merge_weights(o.label_weights for o in out.values())
  return finished, pairs, weights


# --- Beam steps (executor.py wires them) ---------------------------------
# Every element is (bucket, path of an .npz file beside the output), as
# elsewhere in GraphBuilder: no runner holds a bucket's arrays in a record.
# They run as a second job, only where the union-find of every node would
# not fit the budget (Executor._contract).


def _store(directory, prefix, split):
  for bucket, (a, b) in split.items():
    yield bucket, corpus.store_arrays(directory, prefix, a=a, b=b)


def _load(paths):
  for path in paths:
    stored = corpus.load_arrays(path)
    yield stored['a'], stored['b']


def forest_to_buckets(forest_path, buckets, directory):
  """A write shard's forest as pairs, both directions, by bucket."""
  stored = corpus.load_arrays(forest_path)  # _WriteShard's
  pairs = forest_pairs(stored['roots'], stored['members'])
  yield from _store(directory, 'pairs', split_by_bucket(
      pairs.src, buckets, pairs.src, pairs.tgt))


# Nodes a first-round weights element covers.
_RANGE_NODES = 1 << 20


def node_ranges(num_nodes):
  return [(start, min(start + _RANGE_NODES, num_nodes))
          for start in range(0, num_nodes, _RANGE_NODES)]


def range_weights_to_buckets(node_range, buckets, directory):
  """The nodes of one of node_ranges() with weight 1, by bucket."""
  nodes, weights = node_weights(*node_range)
  yield from _store(directory, 'weights', split_by_bucket(
      nodes, buckets, nodes, weights))


class ContractBucket(beam.DoFn):
  """Step 1, 3 and half of 2 of a round on one bucket's joined files."""
  LABELS, WEIGHTS, REQUESTS, FINISHED = 'labels', 'weights', 'requests', 'done'

  def __init__(self, round_index, directory):
    super().__init__()
    self._round = round_index
    self._directory = directory

  def process(self, keyed, buckets):
    bucket, joined = keyed
    pairs = merge_pairs(Pairs(*p) for p in _load(joined['pairs']))
    weights = merge_weights(Weights(*w) for w in _load(joined['weights']))
    out = contract_bucket(pairs, weights, self._round)
    if len(out.labels.nodes):
      yield from (beam.pvalue.TaggedOutput(self.LABELS, x) for x in _store(
          self._directory, 'labels', {bucket: out.labels}))
    for tag, part in ((self.WEIGHTS, out.label_weights),
                      (self.REQUESTS, out.requests)):
      yield from (beam.pvalue.TaggedOutput(tag, x) for x in _store(
          self._directory, tag, split_by_bucket(part[0], buckets, *part)))
    if len(out.finished):
      yield beam.pvalue.TaggedOutput(self.FINISHED, (
          self._round, len(out.finished), int(out.finished.max())))


def relabel_to_buckets(keyed, buckets, directory):
  """Step 2's second half on one bucket's requests and labels: the round's
  new pairs, both directions, by bucket."""
  _, joined = keyed
  if not joined['requests']:
    return
  (nodes, labels), = _load(joined['labels'])
  pairs = merge_pairs(relabel_requests(Pairs(*r), Weights(nodes, labels))
                      for r in _load(joined['requests']))
  yield from _store(directory, 'pairs', split_by_bucket(
      pairs.src, buckets, pairs.src, pairs.tgt))


def residue_bucket(keyed, directory):
  """A bucket's pairs and weights after the last round, merged into one
  file each: (nodes, pairs, weights path, pairs path)."""
  _, joined = keyed
  pairs = merge_pairs(Pairs(*p) for p in _load(joined['pairs']))
  weights = merge_weights(Weights(*w) for w in _load(joined['weights']))
  if not len(weights.nodes):
    return
  yield (len(weights.nodes), len(pairs.src),
         corpus.store_arrays(directory, 'residue', a=weights.nodes,
                             b=weights.weights),
         corpus.store_arrays(directory, 'residue', a=pairs.src, b=pairs.tgt))


def summarize(finished, residue, budget_bytes):
  """The component statistics from the rounds' finished components
  ((round, count, largest) tuples) and the residue buckets
  (residue_bucket's): (stats, residue nodes), stats None where the
  residue's union-find does not fit the budget."""
  nodes = sum(r[0] for r in residue)
  if nodes * RESIDUE_BYTES_PER_NODE + sum(
      r[1] for r in residue) * RESIDUE_BYTES_PER_PAIR > budget_bytes:
    return None, nodes
  weights = merge_weights(Weights(*w) for w in _load(r[2] for r in residue))
  loaded = list(_load(r[3] for r in residue))
  sizes = finish(Pairs(_concat([a for a, _ in loaded]),
                       _concat([b for _, b in loaded])), weights)
  largest = max([f[2] for f in finished] + [int(sizes.max(initial=0))])
  # Isolated: the first round's finished nodes, or (without rounds) the
  # residue's nodes of weight 1 on no pair; after a round, a node of weight
  # 1 still has a pair (its neighbours took other labels).
  alone = int(((weights.weights == 1) & ~np.isin(
      weights.nodes, _concat([a for a, _ in loaded]))).sum())
  return {'isolated_nodes': sum(f[1] for f in finished if f[0] == 0) + alone,
          'connected_components': sum(f[1] for f in finished) + len(sizes),
          'largest_component': largest}, nodes
