"""GraphBuilder and GraphAugmentation on the DirectRunner, Flink and Spark,
side by side in one run (`make bench-engines`; results: docs/benchmarks.md).

For each engine, in turn on the same data: the cluster start-up (Flink or
Spark, tfx_nsl/engines.py: 2 TaskManagers / 2 workers of one slot each);
the fixed cost of one Beam job (a one-element pipeline through the same
executor wiring: job submission, SDK worker start, teardown); then
GraphBuilder (exact, 100k x 128, k=10) and GraphAugmentation (100k
examples, out-degree 4, 3 neighbors), each the wall time of the executor's
Do() in this process, medians of `--repeats`. The DirectRunner runs in
multi_processing mode with 2 workers, as the clusters have 2 workers.
Processing = wall - fixed cost. Whole-process times and memory are not
measured here (bench_graph / bench_augment do that for the DirectRunner).
"""
import argparse
import json
import os
import shutil
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
  start = time.time()
  with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
    _ = p | beam.Create([1]) | beam.Map(lambda x: x)
  return time.time() - start


def _graph(spec, beam_args):
  return bench_graph._executor_run(spec, beam_args)['seconds']


def _augment(work, beam_args, tag):
  out = os.path.join(work, f'augment-out-{tag}')
  shutil.rmtree(out, ignore_errors=True)
  seconds, _ = bench_augment._run_ours(os.path.join(work, 'augment'), out,
                                       None, beam_args=beam_args)
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
  results = {'data': data, 'repeats': args.repeats, 'engines': {}}
  for engine in args.engines.split(','):
    row = {}
    if engine == 'direct':
      beam_args, root = DIRECT, None
      row['startup_s'] = 0.0
    else:
      root = engines.home()
      engines.down(engine, root)
      engines.fetch(engine, root)
      start = time.time()
      engines.up(engine, root)
      row['startup_s'] = time.time() - start
      beam_args = engines.beam_args(engine)
    try:
      for name, run in (('fixed_s', lambda: _fixed_cost(beam_args)),
                        ('graph_builder_s', lambda: _graph(spec, beam_args)),
                        ('graph_augmentation_s', lambda: _augment(
                            work, beam_args, engine))):
        times = [run() for _ in range(args.repeats)]
        row[name] = statistics.median(times)
        row[name + '_all'] = times
        print(f'{engine:7s} {name:22s} median {row[name]:8.1f} s  {times}',
              flush=True)
    finally:
      if root is not None:
        engines.down(engine, root)
    for name in ('graph_builder_s', 'graph_augmentation_s'):
      row[name.replace('_s', '_processing_s')] = row[name] - row['fixed_s']
    results['engines'][engine] = row
  print(json.dumps(results, indent=1))
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
