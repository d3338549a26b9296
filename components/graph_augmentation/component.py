"""GraphAugmentation: NSL neighbor features for Examples, joined from a Graph."""
from typing import Optional, Sequence

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ComponentSpec

from tfx_nsl import parameters
from tfx_nsl.components.graph_augmentation import augment_core
from tfx_nsl.components.graph_augmentation.config import AugmentParams
from tfx_nsl.components.graph_augmentation import config
from tfx_nsl.components.graph_augmentation import executor
from tfx_nsl.types import Graph

# Re-exported for users of the component.
LABELED_FEATURE = augment_core.LABELED_FEATURE
STATS_PROPERTY = config.STATS_PROPERTY


# The defaults live in AugmentParams; the signature shows them.
_DEFAULTS = AugmentParams()


class GraphAugmentationSpec(ComponentSpec):
  """GraphAugmentation component spec."""
  PARAMETERS = parameters.spec_parameters(AugmentParams)
  INPUTS = {
      config.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
      config.GRAPH_KEY: ChannelParameter(type=Graph),
  }
  OUTPUTS = {
      config.AUGMENTED_EXAMPLES_KEY: ChannelParameter(
          type=standard_artifacts.Examples),
  }


class GraphAugmentation(base_beam_component.BaseBeamComponent):
  """Joins examples with their graph neighbors, as NSL's `pack_nbrs` does.

  For every example of the seed splits (default: train), the features of its
  top `max_neighbors` out-edge neighbors in `graph` are merged in as
  `NL_nbr_<i>_<feature>` with the edge weight as `NL_nbr_<i>_weight`, and
  `NL_num_nbrs` counts them; this is the input `nsl.keras.GraphRegularization`
  expects. For the same examples and graph the output equals
  `nsl.tools.pack_nbrs` feature for feature (neighbors by weight, then by the
  larger id; duplicate edges keep their largest weight; unknown neighbor ids
  skipped). Splits that are not seed splits are copied unchanged. The graph
  can come from `GraphBuilder` or from an NSL TSV edge file brought in with
  `tfx.dsl.Importer(source_uri=folder, artifact_type=tfx_nsl.Graph)`.

  The join runs on Beam and keeps nothing per example on the driver; each
  node keeps only its best `max_neighbors` candidates while edges stream by.

  Unlabeled examples as seeds (`unlabeled_as_seeds=True`, beyond NSL): the
  examples of the 'unlabeled' split get neighbors too and are written into the
  first seed split, after the labeled ones. Every example written to a seed
  split then carries the int64 feature `NL_labeled` (`LABELED_FEATURE`): 1 if
  it came from a seed split, 0 if from the unlabeled split, so the Trainer can
  mask their supervised loss while their neighbor loss still counts. Their
  label feature stays as it was (usually absent). The 'unlabeled' split
  itself is also copied through unchanged.

  `max_neighbors` and `id_feature` may be RuntimeParameters; their values
  are checked when the component runs, before any data is read.

  Outputs:
    augmented_examples: the input's splits; the seed splits' examples with
      the neighbor features added, the others copied unchanged. Custom
      property `augmentation_stats`: the counters below as JSON.

  Example:
    graph = tfx.dsl.Importer(source_uri='/data/graph_dir',
                             artifact_type=tfx_nsl.Graph).with_id('graph')
    augment = GraphAugmentation(examples=example_gen.outputs['examples'],
                                graph=graph.outputs['result'],
                                max_neighbors=2, add_undirected_edges=True)
    ... Trainer(examples=augment.outputs['augmented_examples'], ...)

  Bad input:
    Malformed edge lines, self-loops, duplicate edges, edges naming
    unknown ids, duplicate example ids, examples whose id is unusable, neighbors
    that lack a requested feature: counted with Beam counters in namespace
    'tfx_nsl.GraphAugmentation', logged, and stored as JSON in the output's
    custom property `augmentation_stats`. Self-loops are dropped, and seeds
    with an unusable id (several values, floats, the empty string) are kept with no neighbors
    (pack_nbrs has no such rule). An example without the id feature is named
    by a digest of its bytes, as GraphBuilder names it, so the two join. The
    run fails when no edge line is usable, or when edges exist but no seed got
    a neighbor (almost always an id mismatch).
    A parameter out of range or of the wrong type: ValueError naming it,
    at construction (or, for a RuntimeParameter, when the component
    starts).
  """

  SPEC_CLASS = GraphAugmentationSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self,
               examples: types.BaseChannel,
               graph: types.BaseChannel,
               max_neighbors: int = _DEFAULTS.max_neighbors,
               add_undirected_edges: bool = _DEFAULTS.add_undirected_edges,
               id_feature: str = _DEFAULTS.id_feature,
               seed_splits: Sequence[str] = tuple(_DEFAULTS.seed_splits),
               neighbor_splits: Optional[Sequence[str]] = None,
               neighbor_features: Optional[Sequence[str]] = None,
               unlabeled_as_seeds: bool = _DEFAULTS.unlabeled_as_seeds):
    """Constructs a GraphAugmentation component.

    Args:
      examples: Channel of `Examples` (tf.Example payload) with an id feature.
      graph: Channel of `tfx_nsl.Graph`: `*.tsv` files of
        `source<TAB>target[<TAB>weight]` lines naming examples by id.
      max_neighbors: Neighbors merged into each seed at most (>= 1). The
        Trainer may use fewer; they come best first.
      add_undirected_edges: Also use every edge reversed (largest weight per
        pair), as pack_nbrs' flag of that name. Use it for graphs that list
        each edge once, such as citations.
      id_feature: Feature holding each example's id: one bytes value (UTF-8)
        or one int64 value, compared with the graph's ids as text; absent,
        a digest of the example (`tfx_nsl.graph_io.node_id`).
      seed_splits: Splits whose examples get neighbors. Default: ['train'].
      neighbor_splits: Splits whose examples may be neighbors. Default: the
        seed splits plus 'unlabeled', those that exist. Never list eval data
        here unless you mean to train on its features.
      neighbor_features: Features copied from each neighbor. Default (None):
        all of them, the id included, as pack_nbrs does. A subset keeps the
        records small (e.g. just the model's input features).
      unlabeled_as_seeds: Also give neighbors to the 'unlabeled' split and
        write those examples into the first seed split, marked with
        `NL_labeled` = 0 (see the class docstring).

    Raises:
      ValueError: if a parameter is out of range, with what to pass instead.
    """
    params = AugmentParams(
        max_neighbors=max_neighbors,
        add_undirected_edges=add_undirected_edges, id_feature=id_feature,
        seed_splits=seed_splits, neighbor_splits=neighbor_splits,
        neighbor_features=neighbor_features,
        unlabeled_as_seeds=unlabeled_as_seeds)
    spec = GraphAugmentationSpec(
        examples=examples, graph=graph,
        augmented_examples=types.Channel(type=standard_artifacts.Examples),
        **params.to_exec_properties(),
        **{parameters.FINGERPRINT_KEY: parameters.fingerprint()})
    super().__init__(spec=spec)
