"""GraphBuilder: a similarity graph from example embeddings, built with Beam."""
from typing import List, Optional, Union

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ComponentSpec

from tfx_nsl import parameters
from tfx_nsl.components.graph_builder import executor
from tfx_nsl.components.graph_builder.params import GraphBuilderParams
from tfx_nsl.components.graph_builder.params import Mode
from tfx_nsl.types import Graph


# The defaults live in GraphBuilderParams; the signature shows them.
_DEFAULTS = GraphBuilderParams()


class GraphBuilderSpec(ComponentSpec):
  """GraphBuilder component spec."""
  # The mode travels as one section's JSON (params.py).
  PARAMETERS = parameters.spec_parameters(GraphBuilderParams, mode=str)
  INPUTS = {
      'examples': ChannelParameter(type=standard_artifacts.Examples),
      'model': ChannelParameter(type=standard_artifacts.Model, optional=True),
  }
  OUTPUTS = {
      'graph': ChannelParameter(type=Graph),
  }


class GraphBuilder(base_beam_component.BaseBeamComponent):
  """Builds a similarity graph over examples, in NSL's TSV edge format.

  Nodes are examples, named by `id_feature` (an id is derived from the
  example's bytes where it is missing). Each node gets edges to the examples
  whose embedding similarity is at least `similarity_threshold`, at most
  `max_neighbors` of them (highest first; equal float32 scores break by
  ascending id, but exact-duplicate embeddings may score one rounding apart
  in blocked matrix products, so their order among themselves is not
  guaranteed). Embeddings come from numeric `embedding_features`
  (concatenated), or from an embedding `model` (a SavedModel whose signature
  takes serialized tf.Examples), applied with tfx-bsl's RunInference. To embed Transform outputs, pass
  `Transform.outputs['transformed_examples']` as `examples`.

  No step holds the corpus or the edge list: the nodes are stored as id-range
  shards, each within a quarter of `memory_budget_mb`, and only small models
  (dimensions, shard boundaries, centroids) are broadcast.

  `mode` is one section: `Exact()` scores every pair as blocked matrix
  products (a block of one shard against one shard); `Lsh(...)` scores only pairs
  that share a random-hyperplane bucket in one of its rounds; `Partition(...)`
  (faster and more accurate on clustered embeddings) scores each node against
  the members of its nearest k-means regions. Each section holds its own
  knobs (see their docstrings). Both approximate modes report the recall they
  reached on a sample of nodes in stats.json.

  Any int, float or str parameter may be a RuntimeParameter (`mode`: a str
  one holding a mode name or a section's JSON); its value is checked when
  the component runs, before any data is read.

  Outputs:
    graph: `edges-*.tsv` shards (`source<TAB>target<TAB>weight`, readable
      by `nsl.tools`) and `stats.json` (nodes, edges, degree histogram,
      isolated nodes and weakly connected components (by contraction
      rounds on the workers past `memory_budget_mb` at 24 bytes a node;
      null where even what they leave does not fit), the recall estimate, in
      partition mode the probes used and their calibration recall, the
      examples left out and why, the counters, the parameters used);
      custom properties `num_nodes` and `num_edges`.

  Bad input:
    A parameter out of range or of the wrong type: ValueError naming the
    parameter, the value and what is allowed, at construction (or, for a
    RuntimeParameter, when the component starts). Examples without an
    embedding feature, with an embedding of another length, with NaN or
    infinite values, all zeros (cosine) or too large for float32 dot
    products (dot), and examples whose id is unusable (several values,
    floats, the empty string, tabs, line breaks or NUL) are left out, counted
    (`missing_embedding`, `wrong_dimension`, `non_finite_embedding`,
    `zero_embedding`, `embedding_too_large`, `unusable_id`) and named in
    the log (first 5).
    Duplicate ids, splits that do not exist, no examples at all, or no
    usable example: the run fails with a message naming the ids or splits.
  """
  SPEC_CLASS = GraphBuilderSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self,
               examples: types.BaseChannel,
               embedding_features: Optional[List[str]] = None,
               model: Optional[types.BaseChannel] = None,
               splits: Optional[List[str]] = None,
               id_feature: str = _DEFAULTS.id_feature,
               similarity: str = _DEFAULTS.similarity,
               similarity_threshold: float = _DEFAULTS.similarity_threshold,
               max_neighbors: Optional[int] = None,
               undirected: bool = _DEFAULTS.undirected,
               mode: Union[Mode, str] = _DEFAULTS.mode,
               num_shards: int = _DEFAULTS.num_shards,
               memory_budget_mb: int = _DEFAULTS.memory_budget_mb,
               read_batch_size: int = _DEFAULTS.read_batch_size,
               embedding_signature: str = _DEFAULTS.embedding_signature,
               embedding_output: Optional[str] = None):
    """Constructs a GraphBuilder.

    Args:
      examples: Examples channel.
      embedding_features: numeric features whose values, concatenated, are
        the embedding. Required unless `model` is given.
      model: optional Model channel of an embedding model.
      splits: splits whose examples become nodes; default: train, plus
        unlabeled when the examples have it.
      id_feature: feature naming each example: one non-empty bytes (UTF-8,
        no tabs, line breaks or NUL) or int64 value; an example without it is named by a
        digest of its record, others with an unusable id are left out
        (counted, logged).
      similarity: 'cosine' (NSL's) or 'dot'.
      similarity_threshold: minimum similarity of an edge. Scores within
        1e-5 of it (relative past 1, for dot) are computed again in float64,
        so for cosine whether an edge at the threshold exists does not
        depend on how a float32 product was blocked (for dot with long
        vectors the float32 error can pass that slack).
      max_neighbors: at most this many neighbors a node (top-k); None keeps
        every neighbor above the threshold, as `nsl.tools.build_graph` does.
      undirected: also add each edge's reverse (NSL's graphs are undirected).
      mode: `Exact()`, `Lsh(...)` or `Partition(...)` (from
        `tfx_nsl.components.graph_builder`), a mode name for its defaults,
        or the JSON of one section, e.g. '{"partition": {"probes": 12}}'.
      num_shards: node shards, one edge file each; 0 picks one per 50,000
        nodes (at most 256). Raised where a shard's vectors would take more
        than a quarter of `memory_budget_mb`.
      memory_budget_mb: MiB of vectors one unit of work may hold: a shard
        takes at most a quarter, the files a worker keeps loaded at most
        half; see docs/design.md for a worker's peak memory.
      read_batch_size: examples per decoded batch.
      embedding_signature: the embedding model's signature.
      embedding_output: the signature output holding the embedding; may be
        left out when it has one output.
    """
    if not embedding_features and model is None:
      raise ValueError('GraphBuilder needs embedding_features (numeric '
                       'features to use as the embedding) or an embedding '
                       'model')
    if embedding_features and model is not None:
      raise ValueError('GraphBuilder takes embedding_features or model, not '
                       'both: the model computes the embedding itself')
    # Validated now, with the same rules the executor applies.
    params = GraphBuilderParams(
        embedding_features=embedding_features or [], splits=splits,
        id_feature=id_feature, similarity=similarity,
        similarity_threshold=similarity_threshold,
        max_neighbors=max_neighbors, undirected=undirected, mode=mode,
        num_shards=num_shards, memory_budget_mb=memory_budget_mb,
        read_batch_size=read_batch_size,
        embedding_signature=embedding_signature,
        embedding_output=embedding_output)
    spec = GraphBuilderSpec(
        examples=examples, model=model, graph=types.Channel(type=Graph),
        **params.to_exec_properties(),
        **{parameters.FINGERPRINT_KEY: parameters.fingerprint()})
    super().__init__(spec=spec)
