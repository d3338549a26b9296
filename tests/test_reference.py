"""The component reference pages are generated from the code and current."""
import os

import pytest

from tfx_nsl import reference

DOCS = os.path.join(os.path.dirname(__file__), '..', 'docs', 'components')


@pytest.mark.parametrize('name,text', sorted(reference.pages().items()))
def test_reference_page_is_current(name, text):
  with open(os.path.join(DOCS, name), encoding='utf-8') as f:
    assert f.read() == text, f'docs/components/{name} is stale: run make docs'


@pytest.mark.parametrize('name,text', sorted(reference.pages().items()))
def test_every_parameter_input_and_output_is_described(name, text):
  rows = [line for line in text.splitlines() if line.startswith('| `')]
  assert rows
  cells = [[c.strip() for c in row.strip()[1:-1].split(' | ')]
           for row in rows]
  undescribed = [c[0] for c in cells if not c[-1]]
  assert not undescribed, f'{name}: describe {undescribed} in the docstring'
  for section in ('## Parameters', '## Inputs', '## Outputs', '## Counters',
                  '## Bad input'):
    assert section in text, (name, section)
