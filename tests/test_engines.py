"""GraphBuilder and GraphAugmentation on local Flink and Spark clusters give
what they give on the DirectRunner, with only `beam_pipeline_args` changed.

Each engine's cluster (tfx_nsl/engines.py: 2 TaskManagers or 2 Spark
workers, SDK workers as processes) is started once for this module and
stopped after it, unless it was already running.
"""
import json
import os

import numpy as np
import pytest

from tfx_nsl import beam_executor
from tfx_nsl import constants
from tfx_nsl import engines
from tfx_nsl.components.graph_augmentation import executor as augment_executor
from tfx_nsl.components.graph_builder import corpus
from tfx_nsl.components.graph_builder import executor as graph_executor
from tfx_nsl.components.graph_builder import graph_core
from tfx_nsl.components.graph_builder.params import Exact, GraphBuilderParams
from tfx_nsl.components.graph_builder.params import Lsh, Partition

import test_graph_augmentation as augmentation_tests
import test_graph_builder as graph_tests
from graph_testing import clustered_embeddings, linear_embedding_model

DIRECT = list(constants.DEFAULT_BEAM_ARGS)
NUM = 3000  # Several bundles per stage on 2 workers.

# GraphBuilder on embedding features: approximate modes and exact without a
# top-k; exact with a top-k runs on model embeddings (test_graph_builder_model_embeddings_same_graph): one job
# fewer per engine, and the read paths differ only before the corpus.
EXACT = dict(similarity_threshold=0.0, max_neighbors=5, undirected=True,
             mode=Exact(block_size=256), num_shards=2)
GRAPH_CASES = {
    'lsh': dict(similarity_threshold=0.0, max_neighbors=5, undirected=False,
                mode=Lsh(splits=5, rounds=6, recall_sample_size=300)),
    # Exact without a top-k: every pair over the threshold (pair_edges),
    # symmetric as scored, so no reverse edges are added.
    'pairs': dict(similarity_threshold=0.97, max_neighbors=None,
                  undirected=True, mode=Exact(block_size=512)),
    'partition': dict(similarity_threshold=0.0, max_neighbors=5,
                      undirected=False,
                      # probes=None: chosen on the runner (calibration).
                      mode=Partition(size=150, recall_sample_size=300)),
}


@pytest.fixture(scope='module', params=engines.ENGINES)
def engine(request):
  """(name, beam args) with that engine's cluster up."""
  with engines.cluster(request.param) as args:
    yield request.param, args


@pytest.fixture(scope='module')
def vectors():
  return clustered_embeddings(NUM, 16, 30, 0.3, seed=21)


@pytest.fixture
def runner_probes(monkeypatch):
  """Records the DirectRunner-only decisions the executors take."""
  seen = {'spill': [], 'threads': []}
  spill = augment_executor.Executor._spill_dir
  threads = graph_executor._scoring_threads
  monkeypatch.setattr(augment_executor.Executor, '_spill_dir',
                      lambda self, p: seen['spill'].append(spill(self, p))
                      or seen['spill'][-1])
  monkeypatch.setattr(graph_executor, '_scoring_threads',
                      lambda p: seen['threads'].append(threads(p))
                      or seen['threads'][-1])
  return seen


def _workers_started(engine_name):
  root = engines.home() / 'run' / engine_name / 'workers'
  return set(os.listdir(root)) if root.is_dir() else set()


def _assert_same_graph(direct, remote, near_ties=False):
  """The same edges and stats. With `near_ties` (model embeddings, which
  RunInference computes in other batches per runner, so they differ by
  float32 rounding), a neighbor may swap with one that scores within that
  rounding (1.5e-6: weights are written with 6 decimals), once or twice."""
  _, direct_edges, direct_stats = direct
  _, remote_edges, remote_stats = remote
  only_direct = sorted(direct_edges[k] for k in
                       direct_edges.keys() - remote_edges.keys())
  only_remote = sorted(remote_edges[k] for k in
                       remote_edges.keys() - direct_edges.keys())
  if not near_ties:
    assert not only_direct and not only_remote
  assert len(only_direct) == len(only_remote) <= 4, (only_direct,
                                                     only_remote)
  for a, b in zip(only_direct, only_remote):
    assert a == pytest.approx(b, abs=1.5e-6)
  for key in direct_edges.keys() & remote_edges.keys():
    assert remote_edges[key] == pytest.approx(direct_edges[key],
                                              abs=1.5e-6), key
  if only_direct:  # A swap moves a degree between nodes; the rest holds.
    for key in ('num_nodes', 'counters'):
      assert remote_stats[key] == direct_stats[key], key
    assert abs(remote_stats['num_edges'] - direct_stats['num_edges']) <= len(
        only_direct)
  else:
    assert remote_stats == direct_stats


@pytest.mark.engines
@pytest.mark.parametrize('case', sorted(GRAPH_CASES))
def test_graph_builder_same_graph(engine, case, vectors, tmp_path,
                                  runner_probes):
  name, args = engine
  splits = {'train': graph_tests._rows(vectors[:2500]),
            'unlabeled': graph_tests._rows(vectors[2500:], prefix='u')}
  params = dict(embedding_features=['emb'], **GRAPH_CASES[case])
  before = _workers_started(name)
  remote = graph_tests._run_executor(tmp_path, splits, name=name,
                                     beam_args=args, **params)
  assert len(_workers_started(name) - before) >= 2  # More than one worker.
  direct = graph_tests._run_executor(tmp_path, splits, name='direct',
                                     beam_args=DIRECT, **params)
  assert direct[2]['num_nodes'] == NUM
  _assert_same_graph(direct, remote)
  if case == 'partition':  # Threads only for a one-worker DirectRunner.
    assert runner_probes['threads'] == [1, len(os.sched_getaffinity(0))]


@pytest.mark.engines
def test_graph_builder_model_embeddings_same_graph(engine, tmp_path):
  name, args = engine
  rng = np.random.RandomState(22)
  x = rng.rand(NUM, 6).astype(np.float32)
  projection = rng.standard_normal((6, 4)).astype(np.float32)
  model = linear_embedding_model(tmp_path / 'model', projection)
  rows = [{'id': f'n{i:04d}', 'x': x[i]} for i in range(NUM)]
  params = EXACT
  remote = graph_tests._run_executor(tmp_path, {'train': rows}, name=name,
                                     beam_args=args, model=model, **params)
  direct = graph_tests._run_executor(tmp_path, {'train': rows}, name='direct',
                                     beam_args=DIRECT, model=model, **params)
  assert direct[2]['num_nodes'] == NUM
  assert direct[2]['num_edges'] >= NUM * 5  # Top 5 and their reverses.
  _assert_same_graph(direct, remote, near_ties=True)


@pytest.mark.engines
def test_graph_builder_contraction_job(engine, tmp_path):
  """The components' second job (graphs whose every node's label would not
  fit the budget: connectivity.py) on the engine, from forests as the write
  shards store them: the one-process union-find's components."""
  name, args = engine
  rng = np.random.RandomState(5)
  num_nodes, num_edges = 5000, 8000  # a giant component and many small
  src, tgt = rng.randint(num_nodes, size=(2, num_edges))
  corpus_dir = str(tmp_path / 'corpus')
  os.makedirs(corpus_dir)
  forests = [graph_core.spanning_forest(src[part], tgt[part])
             for part in np.array_split(np.arange(num_edges), 4)]
  files = [corpus.store_arrays(corpus_dir, f'forest{i}', roots=r, members=m)
           for i, (r, m) in enumerate(forests)]
  partial = tmp_path / graph_executor._PARTIAL_STATS
  partial.write_text(json.dumps({'num_nodes': num_nodes,
                                 graph_executor._CONTRACTION: {
                                     'buckets': 3, 'forest_files': files}}))
  graph_executor.Executor(graph_executor.Executor.Context(
      beam_pipeline_args=args, tmp_dir=str(tmp_path / 'tmp')))._contract(
          str(tmp_path), GraphBuilderParams(embedding_features=['emb']),
          corpus_dir)
  stats = json.loads(partial.read_text())
  assert stats == {'num_nodes': num_nodes,
                   **graph_core.component_stats(num_nodes, forests)}
  assert 1 < stats['connected_components'] < num_nodes - num_edges / 2


@pytest.mark.engines
def test_graph_augmentation_same_examples(engine, tmp_path, runner_probes):
  name, args = engine
  splits, lines = augmentation_tests._random_data(
      seed=23, n_train=2000, n_unlabeled=1500, n_eval=500, n_edges=12000)
  params = dict(max_neighbors=3, add_undirected_edges=True)
  remote = augmentation_tests._run_executor(tmp_path / name, splits, lines,
                                            beam_args=args, **params)
  direct = augmentation_tests._run_executor(tmp_path / 'direct', splits, lines,
                                            beam_args=DIRECT, **params)
  # No driver-local spill folder on a cluster; the DirectRunner has one.
  assert runner_probes['spill'][0] is None
  assert runner_probes['spill'][1] is not None
  for split in ('train', 'eval'):
    remote_examples = augmentation_tests._by_id(
        augmentation_tests._split(remote, split))
    assert remote_examples == augmentation_tests._by_id(
        augmentation_tests._split(direct, split))
  stats = augmentation_tests._stats(remote)
  expected = augmentation_tests._stats(direct)
  assert stats == expected
  assert stats['seeds_written'] == 2000
  augmentation_tests._check_accounting(stats, len(lines))


def test_is_local_knows_exactly_the_in_process_runners():
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.runners.direct import direct_runner

  class ClusterRunner(direct_runner.BundleBasedDirectRunner):
    """Stands for Beam's DaskRunner, a DirectRunner subclass."""

  assert beam_executor.is_local(beam.Pipeline(options=PipelineOptions(DIRECT)))
  assert not beam_executor.is_local(beam.Pipeline(runner=ClusterRunner()))
  for name in engines.ENGINES:
    pipeline = beam.Pipeline(options=PipelineOptions(engines.beam_args(name)))
    assert not beam_executor.is_local(pipeline)
    assert not beam_executor.runs_locally(engines.beam_args(name))


def test_tfx_package_once_a_process_where_tfx_would_add_one(
    tmp_path, monkeypatch):
  """Remote runners get TFX's package where TFX would add it (the same
  decision, checked against TFX's own function), built once a process and
  its folder removed at exit; TFX then adds no second one."""
  import atexit
  from tfx.dsl.components.base import base_beam_executor
  from tfx.utils import dependency_utils
  built, at_exit = [], []

  def build():  # as TFX's: <mkdtemp>/build/tfx/dist/<sdist>
    dist = tmp_path / f'tmp{len(built)}' / 'build' / 'tfx' / 'dist'
    dist.mkdir(parents=True)
    (dist / 'tfx_ephemeral-1.16.0.tar.gz').write_text('sdist')
    built.append(str(dist / 'tfx_ephemeral-1.16.0.tar.gz'))
    return built[-1]

  monkeypatch.setattr(dependency_utils, 'build_ephemeral_package', build)
  monkeypatch.setattr(beam_executor, '_PACKAGE', {})
  monkeypatch.setattr(atexit, 'register',
                      lambda fn, *a, **k: at_exit.append((fn, a, k)))
  flink = engines.beam_args('flink')
  cases = [flink] + [flink + [f'--{flag}=x'] for flag in (
      'extra_package=a.tar.gz', 'setup_file=./setup.py',
      'requirements_file=r.txt', 'sdk_container_image=img',
      'worker_harness_container_image=img')]
  for args in cases:
    tfx_adds = dependency_utils.make_beam_dependency_flags(list(args)) != args
    ours = beam_executor.with_tfx_package(args)
    assert (ours != args) == tfx_adds, args
    if tfx_adds:
      assert ours == args + [f'--extra_package={built[-1]}']
  assert len(built) == 2  # TFX's, then ours once for every later call
  package = beam_executor.tfx_package()
  # No job endpoint: the executor would check that its server answers.
  remote = [a for a in flink if not a.startswith('--job_endpoint')]
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=remote, tmp_dir=str(tmp_path / 'tmp'))
  executor = graph_executor.Executor(context)
  assert [a for a in executor._beam_pipeline_args
          if a.startswith('--extra_package')] == [f'--extra_package={package}']
  assert len(built) == 2 and len(at_exit) == 1
  fn, (pid, root), _ = at_exit[0]
  assert root == str(tmp_path / 'tmp1')
  fn(pid + 1, root)  # a forked child exiting leaves it
  assert (tmp_path / 'tmp1').exists()
  fn(pid, root)
  assert not (tmp_path / 'tmp1').exists() and (tmp_path / 'tmp0').exists()
  assert beam_executor.tfx_package() != package  # gone: built again
  # The DirectRunner gets none.
  local = graph_executor.Executor(base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=DIRECT, tmp_dir=str(tmp_path / 'tmp')))
  assert local._beam_pipeline_args == DIRECT and len(built) == 3


def test_job_server_down_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
  monkeypatch.setitem(engines.PORTS['flink'], 'job', 1)  # Nothing there.
  with pytest.raises(engines.EngineError,
                     match=r'127\.0\.0\.1:1 .*`make flink-up`'):
    graph_tests._run_executor(
        tmp_path, {'train': graph_tests._rows(
            clustered_embeddings(10, 4, 2, 0.1, seed=1))},
        beam_args=engines.beam_args('flink'), embedding_features=['emb'])


def test_missing_jar_names_the_file_and_the_fix(tmp_path):
  with pytest.raises(engines.EngineError,
                     match=r'missing .*flink.*make engines-fetch'):
    engines.up('flink', tmp_path)


def test_a_step_can_fall_back_to_the_direct_runner(tmp_path):
  """How `tfx-nsl run --engine` moves a step an engine cannot run
  (engines.DIRECT_FALLBACK) to the DirectRunner: its args end with the
  fallback, so the DirectRunner wins for it alone."""
  from tfx_nsl.pipelines import local_runner
  from tfx_nsl.pipelines.nsl_pipeline import create_pipeline
  common = dict(
      pipeline_name='p', pipeline_root=str(tmp_path / 'root'),
      data_root=str(tmp_path / 'data'), serving_model_dir=str(tmp_path / 's'),
      trainer_config=local_runner.DIGITS_TRAINER_CONFIG,
      graph_builder_config=local_runner.DIGITS_GRAPH_BUILDER_CONFIG,
      beam_pipeline_args=engines.beam_args('flink'))
  pipeline = create_pipeline(
      component_beam_args={'Evaluator': engines.FALLBACK_ARGS}, **common)
  args = {c.id: c.executor_spec.beam_pipeline_args
          for c in pipeline.components
          if hasattr(c.executor_spec, 'beam_pipeline_args')}
  assert beam_executor.runs_locally(args['Evaluator'])
  assert not beam_executor.runs_locally(args['GraphBuilder'])
  with pytest.raises(ValueError, match=r"\['Nope'\]"):
    create_pipeline(component_beam_args={'Nope': ['--x']}, **common)


def test_down_stops_only_processes_of_that_cluster(tmp_path):
  """A pid in pids.json that now runs something else (pid reuse, or a stale
  file) is left alone; one of this cluster's commands is stopped."""
  import json
  import subprocess
  import sys
  stranger = subprocess.Popen(['sleep', '60'])
  ours = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',
                           str(tmp_path)], start_new_session=True)
  run = tmp_path / 'run' / 'spark'
  run.mkdir(parents=True)
  (run / 'pids.json').write_text(json.dumps(
      {'master': stranger.pid, 'worker-0': ours.pid}))
  try:
    assert engines.down('spark', tmp_path) == [ours.pid]
    assert ours.wait(timeout=10) is not None
    assert stranger.poll() is None
    assert not (run / 'pids.json').exists()
  finally:
    stranger.kill()
    ours.kill()


def test_java_runner_options_are_not_dropped():
  """Beam's PortableRunner sends only declared options to the job server;
  beam_executor.JavaRunnerOptions declares the ones the clusters need (the
  Flink jobs above fail without the detector: the job server's classpath
  holds a folder, which Beam cannot stage)."""
  from apache_beam.options.pipeline_options import PipelineOptions
  for name in engines.ENGINES:
    sent = PipelineOptions(engines.beam_args(name)).get_all_options(
        retain_unknown_options=False)
    assert sent['pipeline_resources_detector_factory_class'] == (
        'tfxnsl.ClusterClasspath')
    assert sent['storage_level'] == (
        'MEMORY_AND_DISK' if name == 'spark' else None)
    assert sent['execution_mode_for_batch'] == (
        'BATCH_FORCED' if name == 'flink' else None)
