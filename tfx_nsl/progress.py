"""A quiet local run: one line per component on the terminal, every other
output (TensorFlow, Keras, absl, Beam, and the processes they start) in a
log file. Standard library only, so that it can start before TensorFlow is
imported and catch what TensorFlow prints on import."""
import contextlib
import logging
import os
import sys
import threading
import time


class PipelineFailed(Exception):
  """A component of a local run failed; the log has the whole story."""

  def __init__(self, component, error, log_path):
    super().__init__(f'{component} failed: {type(error).__name__}: {error}')
    self.component = component
    self.error = error
    self.log_path = log_path


def log_path(output_root, pipeline_name):
  return os.path.join(os.path.abspath(output_root), 'logs',
                      f'{pipeline_name}-{time.strftime("%Y%m%d-%H%M%S")}.log')


_FAILED = 'The pipeline failed'


def tail(path, lines=6):
  """The last non-empty lines of a log before the failure's traceback (the
  error itself is reported apart), indented."""
  if not os.path.exists(path):
    return []
  with open(path, errors='replace') as f:
    kept = [line.rstrip() for line in f.readlines()[-2000:] if line.strip()]
  marks = [i for i, line in enumerate(kept) if _FAILED in line]
  if marks:
    kept = kept[:marks[-1]]
  return ['    ' + line[:300] for line in kept[-lines:]]


LIVE, LINE, LINES = 'live', 'line', 'lines'


class Progress(logging.Handler):
  """One line per component, from TFX's start/finish log records, in one of
  three styles: LIVE (a terminal showing nothing else: the line is
  rewritten with a live indicator and the elapsed time), LINE (a file or
  pipe showing nothing else: the component's name when it starts, its
  status on the same line when it ends) or LINES (other output comes in
  between, as with --verbose: a line when it starts and one when it
  ends)."""
  _START = 'Component %s is running.'
  _END = 'Component %s is finished.'
  _CACHED = 'A cached execution %d is used.'
  _SPINNER = '|/-\\'

  def __init__(self, stream, style=None):
    super().__init__(logging.INFO)
    self._stream = stream
    self._style = style or (LIVE if stream.isatty() else LINE)
    self._live = self._style == LIVE
    self._lock = threading.Lock()
    self._cached = False
    self.current = None
    self._started = 0.0
    self._stop = threading.Event()
    self._ticker = None
    if self._live:
      self._ticker = threading.Thread(target=self._tick, daemon=True)
      self._ticker.start()

  def _write(self, text):
    self._stream.write(text)
    self._stream.flush()

  def _tick(self):
    turn = 0
    while not self._stop.wait(0.5):
      with self._lock:
        if self.current:
          turn += 1
          self._write(f'\r  {self.current:<20} {self._SPINNER[turn % 4]} '
                      f'{time.time() - self._started:.0f} s\x1b[K')

  def _end_line(self, status):
    self._write({LIVE: f'\r  {self.current:<20} {status}\x1b[K\n',
                 LINE: f'{status}\n',
                 LINES: f'  {self.current:<20} {status}\n'}[self._style])
    self.current = None

  def emit(self, record):
    with self._lock:
      if record.msg == self._START:
        self.current, self._started, self._cached = (
            record.args[0], time.time(), False)
        self._write(f'  {self.current:<20} ' + (
            'started\n' if self._style == LINES else ''))
      elif record.msg == self._END and self.current:
        self._end_line('cached: reused the outputs of an identical earlier '
                       'run' if self._cached else
                       f'done in {time.time() - self._started:.1f} s')
      elif record.msg == self._CACHED:
        self._cached = True

  def fail(self):
    """Ends the running component's line as failed; returns its name."""
    with self._lock:
      name = self.current
      if name:
        self._end_line(f'FAILED after {time.time() - self._started:.1f} s')
      return name

  def close(self):
    with self._lock:
      if self.current:  # Interrupted: end the line.
        self._end_line('stopped')
    self._stop.set()
    if self._ticker is not None:
      self._ticker.join()
    super().close()


@contextlib.contextmanager
def quiet(path, verbose=False):
  """Yields a stream to the terminal; everything else this process and its
  children write goes to the file `path` (unless `verbose`)."""
  if verbose:  # Everything stays on the terminal; there is no log file.
    yield sys.stdout
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(fd) for fd in (1, 2)]
  terminal = os.fdopen(os.dup(saved[0]), 'w', buffering=1)
  try:
    with open(path, 'a', buffering=1) as log:
      try:
        # File descriptors, not sys.stdout: C++ logs and child processes.
        for fd in (1, 2):
          os.dup2(log.fileno(), fd)
        yield terminal
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
          os.dup2(copy, fd)
  finally:
    for copy in saved:
      os.close(copy)
    terminal.close()


def run_with_progress(run, terminal, path, style=None):
  """Calls `run()` (a TFX LocalDagRunner run) with one line per component on
  `terminal`; a failure raises PipelineFailed naming the component."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)  # TFX's per-component lines.
  progress = Progress(terminal, style)
  absl_logger = logging.getLogger('absl')
  absl_logger.addHandler(progress)
  try:
    run()
  except (Exception, SystemExit) as e:  # pylint: disable=broad-except
    # SystemExit too: argparse exits on a bad Beam flag inside a component.
    logging.getLogger(__name__).exception(_FAILED)
    raise PipelineFailed(progress.fail() or 'the pipeline', e, path) from e
  finally:
    absl_logger.removeHandler(progress)
    progress.close()
    absl_logging.set_verbosity(verbosity)
