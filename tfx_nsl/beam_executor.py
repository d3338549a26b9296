"""What the tfx-nsl Beam executors share: local start-up, TFX's package for
remote workers, and Beam counters."""
import atexit
import copy
import os
import shutil
import sys
import threading
from typing import Dict

from absl import flags
from absl import logging
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import PortableOptions
from apache_beam.options.pipeline_options import StandardOptions
from tfx.dsl.components.base import base_beam_executor
from tfx.utils import dependency_utils

from tfx_nsl import engines


class JavaRunnerOptions(PipelineOptions):
  """Options of Beam's Java runners that tfx-nsl passes on.

  Beam's Python PortableRunner sends a job server only the options that
  some Python PipelineOptions class declares and drops the rest, so these
  are declared here (tfx_nsl/engines.py sets them for the local clusters).
  """

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--storage_level', default=None,
        help='Spark: storage level of cached stages, e.g. MEMORY_AND_DISK '
        '(Beam\'s default MEMORY_ONLY recomputes evicted partitions).')
    parser.add_argument(
        '--execution_mode_for_batch', default=None,
        help='Flink: PIPELINED (Beam\'s default) or BATCH_FORCED, which '
        'avoids deadlocks of diamond-shaped batch pipelines.')
    parser.add_argument(
        '--pipeline_resources_detector_factory_class', default=None,
        help='Flink, Spark: the class that picks the jars a job stages.')


_LOCAL_RUNNERS = (None, 'direct', 'directrunner', 'bundlebaseddirectrunner',
                  'switchingdirectrunner')


def runs_locally(beam_pipeline_args) -> bool:
  """Whether the args run Beam's DirectRunner (the default runner)."""
  runner = PipelineOptions(list(beam_pipeline_args)).view_as(
      StandardOptions).runner
  if runner is not None and not isinstance(runner, str):
    return False
  return (runner.lower() if runner else None) in _LOCAL_RUNNERS


def is_local(pipeline) -> bool:
  """Whether a constructed pipeline runs on Beam's DirectRunner: in this
  process, or (multi_processing) in worker processes it forks on this host,
  so that a local temp folder reaches every worker.

  Exactly those runner classes: Beam's DaskRunner subclasses the
  BundleBasedDirectRunner yet runs on a Dask cluster, and the portable
  runners (Flink, Spark) run workers elsewhere.
  """
  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.direct import direct_runner
  from apache_beam.runners.portability.fn_api_runner import FnApiRunner
  return type(pipeline.runner) in (direct_runner.SwitchingDirectRunner,
                                   direct_runner.BundleBasedDirectRunner,
                                   FnApiRunner)


def check_job_endpoint(beam_pipeline_args) -> None:
  """Fails fast, naming the address, when the args name a Beam job server
  (`--job_endpoint`, portable runners) that does not answer."""
  endpoint = PipelineOptions(list(beam_pipeline_args)).view_as(
      PortableOptions).job_endpoint
  if endpoint and endpoint != 'embed':
    engines.check_reachable(endpoint)


# The options that make TFX's make_beam_dependency_flags leave the args
# alone (tfx/utils/dependency_utils.py, TFX 1.16): they say how workers get
# their code. Without any, TFX builds an sdist of the installed TFX for
# them.
_DEPENDENCY_OPTIONS = ('extra_packages', 'setup_file', 'requirements_file',
                       'worker_harness_container_image', 'sdk_container_image')
_PACKAGE = {}
_PACKAGE_LOCK = threading.Lock()


def tfx_package() -> str:
  """TFX's ephemeral sdist of the installed TFX, built once a process and
  removed when it exits. TFX builds one per executor (a `setup.py sdist`
  subprocess of seconds) in a temp folder it never removes (about 50 MB
  each)."""
  with _PACKAGE_LOCK:
    path = _PACKAGE.get('path')
    if path is None or not os.path.exists(path):
      path = dependency_utils.build_ephemeral_package()
      # TFX 1.16 builds it in <mkdtemp()>/build/tfx/dist/.
      root = os.path.dirname(os.path.dirname(os.path.dirname(
          os.path.dirname(path))))
      if os.path.relpath(path, root).split(os.sep)[:3] == [
          'build', 'tfx', 'dist']:
        atexit.register(_remove_in, os.getpid(), root)
      else:
        logging.warning('TFX built its package at %s, not where TFX 1.16 '
                        'puts it: left in place', path)
      _PACKAGE['path'] = path
    return path


def _remove_in(pid, root):
  """Removes `root` in process `pid` only (not in a fork that exits)."""
  if os.getpid() == pid:
    shutil.rmtree(root, ignore_errors=True)


def with_tfx_package(beam_pipeline_args):
  """The args with `--extra_package` of tfx_package() where TFX would add
  its own (no option of _DEPENDENCY_OPTIONS set), else unchanged."""
  options = PipelineOptions(list(beam_pipeline_args)).get_all_options()
  if any(options.get(name) for name in _DEPENDENCY_OPTIONS):
    return list(beam_pipeline_args)
  return list(beam_pipeline_args) + [f'--extra_package={tfx_package()}']


class BeamExecutor(base_beam_executor.BaseBeamExecutor):
  """TFX's Beam executor, its ephemeral sdist built once a process.

  TFX packages itself for remote Beam workers unless the args already say
  how workers get their code; it does so in every executor and leaves the
  package in a temp folder. Here the DirectRunner skips it (its workers, in
  process or subprocesses, import from this environment) and other runners
  share one package per process, removed at exit (tfx_package).
  """

  def __init__(self, context=None):
    args = getattr(context, 'beam_pipeline_args', None)
    if args and runs_locally(args):
      local = copy.copy(context)
      local.beam_pipeline_args = []
      super().__init__(local)
      self._beam_pipeline_args = list(args)
      # As the base class does (b/174174381).
      flags.FLAGS(sys.argv + self._beam_pipeline_args, known_only=True)
      return
    if args:
      check_job_endpoint(args)
      context = copy.copy(context)
      context.beam_pipeline_args = with_tfx_package(args)
    super().__init__(context)


def read_counters(result, namespace) -> Dict[str, int]:
  """Beam counters of `namespace` (committed, else attempted), by name; empty
  where the runner reports no metrics."""
  try:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(namespace))['counters']
  except (NotImplementedError, AttributeError) as e:
    logging.warning('%s: this runner reports no metrics (%s).', namespace, e)
    return {}
  totals = {}
  for counter in counters:
    value = counter.committed
    if value is None:
      value = counter.attempted or 0
    name = counter.key.metric.name
    totals[name] = totals.get(name, 0) + int(value)
  return totals
