"""tfx-nsl run's progress lines, from TFX's per-component log records."""
import io
import logging

from tfx_nsl import progress


def _record(msg, *args):
  return logging.LogRecord('absl', logging.INFO, '', 0, msg, args, None)


def _lines(style):
  out = io.StringIO()
  handler = progress.Progress(out, style)
  for node, cached in (('Trainer', False), ('Pusher', True)):
    handler.emit(_record('Component %s is running.', node))
    if cached:
      handler.emit(_record('A cached execution %d is used.', 3))
    handler.emit(_record('Component %s is finished.', node))
  handler.emit(_record('Component %s is running.', 'Evaluator'))
  assert handler.fail() == 'Evaluator'
  handler.close()
  return out.getvalue().splitlines()


def test_one_line_per_component_when_nothing_else_is_shown():
  lines = _lines(None)  # Not a terminal: the LINE style.
  assert [line.split()[0] for line in lines] == ['Trainer', 'Pusher',
                                                 'Evaluator']
  assert 'done in' in lines[0]
  assert 'cached: reused' in lines[1]
  assert 'FAILED after' in lines[2]


def test_start_and_end_lines_when_logs_come_between():
  lines = _lines(progress.LINES)
  assert [line.split()[1] for line in lines] == [
      'started', 'done', 'started', 'cached:', 'started', 'FAILED']


def test_tail_shows_the_lines_before_the_failure(tmp_path):
  log = tmp_path / 'run.log'
  log.write_text('a\n\nthe cause\nERROR The pipeline failed\nTraceback\n')
  assert progress.tail(str(log)) == ['    a', '    the cause']
  assert progress.tail(str(tmp_path / 'missing.log')) == []
