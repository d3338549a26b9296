"""`tfx-nsl` command line: `tfx-nsl run` runs the pipeline locally."""
import os

# Before anything imports TensorFlow (docs/design.md, "Keras 2 only").
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def _parser():
  parser = argparse.ArgumentParser(prog='tfx-nsl', description=__doc__)
  commands = parser.add_subparsers(dest='command', required=True)
  run = commands.add_parser(
      'run', help='run the NSL pipeline on the bundled digits data locally')
  run.add_argument('--output-root', default='runs',
                   help='where data, pipeline outputs, ML Metadata and the '
                        'pushed model go (default: %(default)s)')
  run.add_argument('--pipeline-name', default='tfx-nsl-digits',
                   help='name in ML Metadata and of the output folders '
                        '(default: %(default)s)')
  run.add_argument('--train-steps', type=int, default=2000,
                   help='Trainer steps (default: %(default)s)')
  run.add_argument('--min-accuracy', type=float, default=0.9,
                   help='clean eval accuracy needed to bless and push '
                        '(default: %(default)s)')
  run.add_argument('--no-adversarial', action='store_true',
                   help='train without NSL adversarial regularization')
  run.add_argument('--no-graph', action='store_true',
                   help='train without NSL graph regularization (the graph '
                        'is still built and joined, so a rerun reuses them '
                        'from the cache and the Trainers see the same '
                        'examples)')
  run.add_argument('--no-baseline', action='store_true',
                   help='do not train and judge the plain model beside it')
  run.add_argument('--engine', choices=('direct', 'flink', 'spark'),
                   default='direct',
                   help='where the Beam steps run: Beam\'s DirectRunner, or '
                        'a local Flink or Spark cluster, started for the run '
                        'and stopped after it unless already up (make '
                        'flink-up / spark-up; docs/engines.md)')
  run.add_argument('--beam-arg', action='append', default=None,
                   help='a Beam pipeline argument, repeatable, added after '
                        'the engine\'s (default for direct: in_memory, one '
                        'worker)')
  run.add_argument('--no-cache', action='store_true',
                   help='rerun every component even if its inputs are unchanged')
  run.add_argument('--verbose', action='store_true', help='show all logs')
  return parser


def main(argv=None):
  args = _parser().parse_args(argv)
  from tfx_nsl import progress  # pylint: disable=g-import-not-at-top
  log = progress.log_path(args.output_root, args.pipeline_name)
  print(f'Running pipeline {args.pipeline_name!r} under '
        f'{os.path.abspath(args.output_root)}\n  logs: ' +
        ('shown here (--verbose)' if args.verbose else
         f'{log} (--verbose shows them here)'), flush=True)
  start = time.time()
  failure, ran = None, False
  with contextlib.ExitStack() as stack:
    # Before TensorFlow is imported: it logs on import.
    terminal = stack.enter_context(progress.quiet(log, args.verbose))
    from tfx_nsl import constants  # pylint: disable=g-import-not-at-top
    from tfx_nsl.pipelines import local_runner  # pylint: disable=g-import-not-at-top
    config = dict(local_runner.DIGITS_TRAINER_CONFIG)
    if args.no_adversarial:
      config['adversarial'] = None
    if args.no_graph:
      config['graph'] = None
    beam_args, per_component = list(constants.DEFAULT_BEAM_ARGS), {}
    if args.engine != 'direct':
      from tfx_nsl import engines  # pylint: disable=g-import-not-at-top
      try:
        beam_args = stack.enter_context(engines.cluster(args.engine))
      except engines.EngineError as e:
        failure = str(e)
      for component_id, reason in engines.DIRECT_FALLBACK.get(
          args.engine, {}).items():
        print(f'  note: {component_id} runs on the DirectRunner, not '
              f'{args.engine}: {reason}', file=terminal)
        per_component[component_id] = list(engines.FALLBACK_ARGS)
    summary = None
    if failure is None:
      try:
        summary = local_runner.run_local(
            output_root=args.output_root,
            pipeline_name=args.pipeline_name,
            trainer_config=config,
            train_steps=args.train_steps,
            min_accuracy=args.min_accuracy,
            train_baseline=not args.no_baseline,
            beam_pipeline_args=beam_args + (args.beam_arg or []),
            component_beam_args=per_component,
            enable_cache=not args.no_cache,
            verbose=args.verbose, terminal=terminal, log_path=log)
      except progress.PipelineFailed as e:
        failure = '\n'.join(str(e).splitlines()[:20])
        ran = True
      except ValueError as e:  # A bad setting, found before any component ran.
        failure = str(e)
  if failure is not None:
    print(f'error: {failure}', file=sys.stderr)
    if not args.verbose and ran:
      print('  last lines of the log:', *progress.tail(log),
            f'  full log: {log}', sep='\n', file=sys.stderr)
    return 1
  print(local_runner.format_summary(summary))
  print(f'  wall time: {time.time() - start:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
