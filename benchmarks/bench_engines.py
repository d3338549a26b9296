"""GraphBuilder and GraphAugmentation on the DirectRunner, Flink and Spark,
side by side in one run (`make bench-engines`; results: docs/benchmarks.md).

All clusters are started first (Flink and Spark, tfx_nsl/engines.py:
2 TaskManagers / 2 workers of one slot each; their start-up is timed). Then
each repeat runs every engine in turn on the same data: the fixed cost of
one Beam job (a one-element pipeline: job submission, SDK worker start,
teardown); GraphBuilder (exact, 100k x 128, k=10); GraphAugmentation (100k
examples, out-degree 4, 3 neighbors). Each is the wall time of the
executor's Do() in this process. Reported: medians of `--repeats`, their
ratios to the DirectRunner's, and processing = median - fixed cost. The
DirectRunner runs in multi_processing mode with 2 workers, as the clusters
have 2 workers. Whole-process times and memory are not measured here
(bench_graph / bench_augment do that for the DirectRunner).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_augment  # noqa: E402  pylint: disable=g-import-not-at-top
import bench_graph  # noqa: E402  pylint: disable=g-import-not-at-top

DIRECT = ['--direct_running_mode=multi_processing', '--direct_num_workers=2']


def _fixed_cost(beam_args):
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  from tfx_nsl import beam_executor  # pylint: disable=g-import-not-at-top,unused-import
  # (It declares the Java runner options that the executors' jobs pass.)
  start = time.time()
  with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
    _ = p | beam.Create([1]) | beam.Map(lambda x: x)
  return time.time() - start


def _graph(spec, beam_args):
  return bench_graph._executor_run(spec, beam_args)['seconds']


def _augment(work, beam_args, tag):
  out = os.path.join(work, f'augment-out-{tag}')
  shutil.rmtree(out, ignore_errors=True)
  # The engine's args replace the DirectRunner mode; no variant.
  seconds, _ = bench_augment._run_ours(os.path.join(work, 'augment'), out,
                                       '', beam_args=beam_args)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--engines', default='direct,flink,spark')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--n', type=int, default=100_000)
  parser.add_argument('--d', type=int, default=128)
  parser.add_argument('--k', type=int, default=10)
  parser.add_argument('--work-dir', default='/tmp/tfx_nsl_bench_engines')
  parser.add_argument('--output', default=None, help='results JSON path')
  args = parser.parse_args()
  from tfx_nsl import engines  # pylint: disable=g-import-not-at-top
  # A killed benchmark still stops the clusters it started.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  work = os.path.abspath(args.work_dir)
  os.makedirs(work, exist_ok=True)
  data = bench_graph.write_dataset(os.path.join(work, 'graph-data'), args.n,
                                   args.d, seed=0, shards=4)
  if not os.path.exists(os.path.join(work, 'augment', 'graph')):
    bench_augment._make_data(os.path.join(work, 'augment'), args.n, 4, 0)
  spec = {'examples': os.path.join(work, 'graph-data', 'examples'),
          'graph_out': os.path.join(work, 'graph-out'),
          'params': {'similarity_threshold': -1.0, 'max_neighbors': args.k,
                     'undirected': False}}
  names = args.engines.split(',')
  rows = {engine: {'startup_s': 0.0} for engine in names}
  beam_args = {'direct': DIRECT}
  root = engines.home()
  clusters = [engine for engine in names if engine != 'direct']
  try:
    for engine in clusters:  # All up at once, so that runs can interleave.
      engines.down(engine, root)
      engines.fetch(engine, root)
      start = time.time()
      engines.up(engine, root)
      rows[engine]['startup_s'] = time.time() - start
      beam_args[engine] = engines.beam_args(engine)
    steps = (('fixed_s', _fixed_cost),
             ('graph_builder_s', lambda a: _graph(spec, a)),
             ('graph_augmentation_s', lambda a: _augment(work, a, 'out')))
    # Round-robin: each repeat runs every engine once, so that the machine's
    # drift in load spreads over all of them alike.
    for repeat in range(args.repeats):
      for engine in names:
        for name, run in steps:
          seconds = run(beam_args[engine])
          rows[engine].setdefault(name + '_all', []).append(seconds)
          print(f'repeat {repeat} {engine:7s} {name:22s} {seconds:8.1f} s',
                flush=True)
  finally:
    for engine in clusters:
      engines.down(engine, root)
  for row in rows.values():
    for name, _ in steps:
      row[name] = statistics.median(row[name + '_all'])
    for name in ('graph_builder_s', 'graph_augmentation_s'):
      row[name.replace('_s', '_processing_s')] = row[name] - row['fixed_s']
  if 'direct' in rows:
    for row in rows.values():  # Ratios of medians, to the DirectRunner's.
      for name in ('graph_builder_s', 'graph_augmentation_s'):
        row[name.replace('_s', '_vs_direct')] = (
            row[name] / rows['direct'][name])
  results = {'data': data, 'repeats': args.repeats, 'engines': rows}
  print(json.dumps(results, indent=1))
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
