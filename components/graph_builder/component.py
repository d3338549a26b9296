"""GraphBuilder: a similarity graph from example embeddings, built with Beam."""
from typing import List, Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ComponentSpec
from tfx.types.component_spec import ExecutionParameter

from tfx_nsl import constants
from tfx_nsl.components.graph_builder import executor
from tfx_nsl.components.graph_builder import graph_core
from tfx_nsl.components.graph_builder.params import EXACT
from tfx_nsl.components.graph_builder.params import GraphBuilderParams
from tfx_nsl.types import Graph


class GraphBuilderSpec(ComponentSpec):
  """GraphBuilder component spec."""
  PARAMETERS = {
      'embedding_features': ExecutionParameter(type=List[str], optional=True),
      'splits': ExecutionParameter(type=List[str], optional=True),
      'id_feature': ExecutionParameter(type=str),
      'similarity': ExecutionParameter(type=str),
      'similarity_threshold': ExecutionParameter(type=float),
      'max_neighbors': ExecutionParameter(type=int, optional=True),
      'undirected': ExecutionParameter(type=bool),
      'mode': ExecutionParameter(type=str),
      'lsh_splits': ExecutionParameter(type=int),
      'lsh_rounds': ExecutionParameter(type=int),
      'lsh_max_bucket_size': ExecutionParameter(type=int),
      'partition_size': ExecutionParameter(type=int),
      'partition_probes': ExecutionParameter(type=int),
      'recall_sample_size': ExecutionParameter(type=int),
      'seed': ExecutionParameter(type=int),
      'num_shards': ExecutionParameter(type=int),
      'block_size': ExecutionParameter(type=int),
      'read_batch_size': ExecutionParameter(type=int),
      'embedding_signature': ExecutionParameter(type=str),
      'embedding_output': ExecutionParameter(type=str, optional=True),
  }
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
  `max_neighbors` of them (highest first, ties by id). Embeddings come from
  numeric `embedding_features` (concatenated), or from an embedding `model`
  (a SavedModel whose signature takes serialized tf.Examples), applied with
  tfx-bsl's RunInference. To embed Transform outputs, pass
  `Transform.outputs['transformed_examples']` as `examples`.

  Modes: 'exact' scores every pair as blocked matrix products (memory: the
  corpus plus one block); 'lsh' scores only pairs that share a
  random-hyperplane bucket in one of `lsh_rounds` rounds; 'partition'
  (faster and more accurate on clustered embeddings) scores each node
  against the members of its `partition_probes` nearest k-means regions.
  Both approximate modes report the recall they reached on a sample of
  nodes in stats.json.

  Output `graph`: `edges-*.tsv` shards (`source<TAB>target<TAB>weight`,
  readable by `nsl.tools`) and `stats.json` (nodes, edges, degree histogram,
  isolated nodes, connected components, the examples left out and why).
  """
  SPEC_CLASS = GraphBuilderSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self,
               examples: types.BaseChannel,
               embedding_features: Optional[List[str]] = None,
               model: Optional[types.BaseChannel] = None,
               splits: Optional[List[str]] = None,
               id_feature: str = constants.ID_FEATURE,
               similarity: str = graph_core.COSINE,
               similarity_threshold: float = 0.8,
               max_neighbors: Optional[int] = None,
               undirected: bool = True,
               mode: str = EXACT,
               lsh_splits: int = 8,
               lsh_rounds: int = 8,
               lsh_max_bucket_size: int = 4096,
               partition_size: int = 500,
               partition_probes: int = 8,
               recall_sample_size: int = 1000,
               seed: int = 0,
               num_shards: int = 0,
               block_size: int = 2048,
               read_batch_size: int = 4096,
               embedding_signature: str = constants.SERVING_SIGNATURE,
               embedding_output: Optional[str] = None):
    """Constructs a GraphBuilder.

    Args:
      examples: Examples channel.
      embedding_features: numeric features whose values, concatenated, are
        the embedding. Required unless `model` is given.
      model: optional Model channel of an embedding model.
      splits: splits whose examples become nodes; default: train, plus
        unlabeled when the examples have it.
      id_feature: feature naming each example: one bytes (UTF-8, no tabs or
        line breaks) or int64 value; an example without it is named by a
        digest of its record, others with an unusable id are left out
        (counted, logged).
      similarity: 'cosine' (NSL's) or 'dot'.
      similarity_threshold: minimum similarity of an edge.
      max_neighbors: at most this many neighbors a node (top-k); None keeps
        every neighbor above the threshold, as `nsl.tools.build_graph` does.
      undirected: also add each edge's reverse (NSL's graphs are undirected).
      mode: 'exact', 'lsh' or 'partition' (approximate: k-means regions of
        about `partition_size` nodes; each node is scored against the
        members of its `partition_probes` nearest regions).
      lsh_splits: hyperplanes per LSH round (up to 2^lsh_splits buckets).
      lsh_rounds: LSH rounds; more rounds, higher recall.
      lsh_max_bucket_size: larger buckets are cut, bounding each product.
      partition_size: mean nodes a region in 'partition' mode.
      partition_probes: regions each node is compared with in 'partition'
        mode; more probes, higher recall, proportionally more work.
      recall_sample_size: nodes on which the approximate modes measure
        their recall against exact.
      seed: seed of the LSH hyperplanes, the partitions and the recall
        sample.
      num_shards: edge files; 0 picks one per 50,000 nodes.
      block_size: query rows per unit of Beam work in 'exact' mode.
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
        embedding_features=list(embedding_features or []), splits=splits,
        id_feature=id_feature, similarity=similarity,
        similarity_threshold=float(similarity_threshold),
        max_neighbors=max_neighbors, undirected=undirected, mode=mode,
        lsh_splits=lsh_splits, lsh_rounds=lsh_rounds,
        lsh_max_bucket_size=lsh_max_bucket_size,
        partition_size=partition_size, partition_probes=partition_probes,
        recall_sample_size=recall_sample_size, seed=seed,
        num_shards=num_shards, block_size=block_size,
        read_batch_size=read_batch_size,
        embedding_signature=embedding_signature,
        embedding_output=embedding_output)
    spec = GraphBuilderSpec(examples=examples, model=model,
                            graph=types.Channel(type=Graph), **params.to_dict())
    super().__init__(spec=spec)
