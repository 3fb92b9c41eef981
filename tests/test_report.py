"""TensorBoard event files next to metrics.jsonl, and perceiver-report's plots and summary."""

import glob
import io
import json
import os
import struct

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import evaluator, report, trainer
from perceiver_jax.data import pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.metrics_log import MetricsLog, read
from tests.helpers import run_main, tiny_mnist1d_config

NUM_STEPS = 6
EVAL_EVERY = 2


def read_events(logdir: str) -> list:
  """Every Event in logdir's tfevents files: TFRecord frames (8-byte length, its masked
  CRC32C, the serialized Event, its masked CRC32C), each CRC checked as TensorBoard does."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, '*tfevents*'))):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack('<Q', header)
      assert struct.unpack('<I', data[pos + 8:pos + 12])[0] == masked_crc32c(header)
      body = data[pos + 12:pos + 12 + length]
      assert struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])[0] == (
          masked_crc32c(body))
      events.append(Event.FromString(body))
      pos += 16 + length
  return events


def scalars(events) -> dict:
  """{tag: {step: (value, wall_time)}} of the scalar summaries in `events`."""
  out = {}
  for event in events:
    for value in event.summary.value:
      if value.WhichOneof('value') == 'simple_value':
        out.setdefault(value.tag, {})[event.step] = (value.simple_value, event.wall_time)
  return out


def _numeric(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in ('step', 'split', 'time')
          and isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """One TINY in-process run (6 steps, eval every 2) plus eval.py's evaluation of step 6."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare('mnist1d/plain', data_dir)
  workdir = str(tmp_path_factory.mktemp('run'))
  config = tiny_mnist1d_config(**{
      'data.data_dir': data_dir, 'train.num_steps': NUM_STEPS,
      'train.eval_every_steps': EVAL_EVERY, 'checkpoint.every_steps': NUM_STEPS})
  trainer.train_and_evaluate(config, workdir)
  evaluator.evaluate(config, workdir)
  return workdir


def test_tensorboard_scalars_equal_metrics_jsonl(tiny_run):
  records = read(os.path.join(tiny_run, 'metrics.jsonl'))
  for split, want_steps in (('train', list(range(1, NUM_STEPS + 1))),
                            ('eval', list(range(EVAL_EVERY, NUM_STEPS + 1, EVAL_EVERY)))):
    events = read_events(os.path.join(tiny_run, 'tensorboard', split))
    assert events[0].file_version == 'brain.Event:2'
    got = scalars(events)
    logged = [r for r in records if r['split'] == split]
    assert [r['step'] for r in logged] == want_steps
    assert set(got) == {k for r in logged for k in _numeric(r)}
    for record in logged:
      for key, value in _numeric(record).items():
        tb_value, wall_time = got[key][record['step']]
        # JSON keeps 6 decimals, the event a float32.
        np.testing.assert_allclose(tb_value, value, rtol=1e-6, atol=1e-6, err_msg=key)
        assert abs(wall_time - record['time']) < 1e-3
    assert all(sorted(steps) == want_steps for steps in got.values())
  train_tags = set(scalars(read_events(os.path.join(tiny_run, 'tensorboard', 'train'))))
  assert {'loss', 'accuracy', 'learning_rate', 'grad_norm', 'examples_per_sec'} <= train_tags


def _checkpoint_param_count(workdir: str, step: int) -> int:
  manager = ocp.CheckpointManager(ckpt.checkpoint_dir(workdir))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return int(sum(np.size(x) for x in jax.tree.leaves(restored['state']['params'])))


def test_report_writes_plots_and_summary(tiny_run):
  # The real command line, as a user runs it; it builds no model and reads no checkpoint.
  proc = run_main('report.py', [tiny_run], devices=1)
  written = json.loads(proc.stdout.strip().splitlines()[-1])
  out_dir = os.path.join(tiny_run, 'report')
  assert written['readme'] == os.path.join(out_dir, 'README.md')
  for name in ('loss', 'accuracy', 'learning_rate', 'grad_norm', 'examples_per_sec'):
    path = os.path.join(out_dir, f'{name}.png')
    assert written['plots'][name] == path
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(path) > 5000
    assert Image.open(path).size == (640, 400)

  text = open(written['readme']).read()
  info = json.load(open(os.path.join(tiny_run, 'run_info.json')))
  num_params = _checkpoint_param_count(tiny_run, NUM_STEPS)
  assert info['num_params'] == num_params
  assert f'| Parameters | {num_params:,} ' in text
  evals = [r for r in read(os.path.join(tiny_run, 'metrics.jsonl')) if r['split'] == 'eval']
  best_acc = max(r['accuracy'] for r in evals)
  best_step = min(r['step'] for r in evals if r['accuracy'] == best_acc)
  final = evals[-1]
  assert (f"| accuracy | {final['accuracy']:.4f} | {best_acc:.4f} (step {best_step}) |"
          in text)
  assert f'| Steps trained | {NUM_STEPS} of {NUM_STEPS} |' in text
  assert '`mnist1d/plain`' in text and '![loss](loss.png)' in text
  # eval.py's evaluation of the last checkpoint is tabled too.
  evaluated = json.load(open(os.path.join(tiny_run, f'eval_{NUM_STEPS}.json')))
  assert f"| {NUM_STEPS} | test | {evaluated['accuracy']:.4f} |" in text


def test_report_of_a_workdir_without_metrics_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='No metrics.jsonl in'):
    report.write_report(str(tmp_path))
  assert not os.path.exists(tmp_path / 'report')


@pytest.mark.parametrize('content,fragment', [
    (b'', 'holds no metrics yet'),
    (b'\n\n', 'holds no metrics yet'),
    (b'not json\n{"loss": 1.0}\n', 'is damaged or not a metrics log: none of its 2 lines is a '
                                  'JSON record with an integer "step" (line 1: \'not json\')'),
    (bytes(range(256)) * 8, 'is damaged or not a metrics log'),
])
def test_an_empty_or_damaged_metrics_log_is_told_apart(content, fragment, tmp_path):
  (tmp_path / 'metrics.jsonl').write_bytes(content)
  with pytest.raises(UserError) as e:
    report.load_run(str(tmp_path))
  assert fragment in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert not os.path.exists(tmp_path / 'report')


def test_only_evaluations_under_training_settings_are_reported(tmp_path):
  # A killed run's half-written last line is skipped, not called damage.
  (tmp_path / 'metrics.jsonl').write_text('{"step": 3, "split": "train", "loss": 1.0}\n{"st')
  (tmp_path / 'eval_3.json').write_text('{"step": 3, "split": "test", "accuracy": 0.9}')
  (tmp_path / 'eval_3.0123abcd.json').write_text('{"step": 3, "split": "test", '
                                                 '"accuracy": 0.1}')
  run = report.load_run(str(tmp_path))
  assert run['evals'] == [{'step': 3, 'split': 'test', 'accuracy': 0.9}]
  assert run['records'] == {'train': [{'step': 3, 'split': 'train', 'loss': 1.0}]}


def test_events_are_readable_without_close_and_mark_a_resume(tmp_path):
  """A killed run (no close) leaves complete events; a resumed run's files carry the purge
  marker at start_step + 1; images round-trip exactly."""
  log = MetricsLog(str(tmp_path), start_step=3)
  log.write(4, 'train', {'loss': 1.5, 'note': 'text is not a scalar'})
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  log.write_image(4, 'eval', 'attention/maps', image)
  with pytest.raises(ValueError, match='height, width'):
    log.write_image(4, 'eval', 'bad', np.zeros((5, 7, 2), np.uint8))

  train = read_events(str(tmp_path / 'tensorboard' / 'train'))
  starts = [e.step for e in train if e.session_log.status == SessionLog.START]
  assert starts == [4]
  assert scalars(train) == {'loss': {4: (1.5, pytest.approx(train[-1].wall_time))}}
  [value] = [v for e in read_events(str(tmp_path / 'tensorboard' / 'eval'))
             for v in e.summary.value]
  assert value.tag == 'attention/maps'
  assert (value.image.height, value.image.width) == (5, 7)
  decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
  np.testing.assert_array_equal(decoded, image)
  log.close()
  assert [r['loss'] for r in read(str(tmp_path / 'metrics.jsonl'))] == [1.5]


def test_best_and_wall_time_rules():
  recs = [{'step': 1, 'loss': 2.0, 'accuracy': 0.5}, {'step': 2, 'loss': 1.0, 'accuracy': 0.7},
          {'step': 3, 'loss': 1.5, 'accuracy': 0.7}, {'step': 4, 'entropy': 3.0}]
  assert report.best(recs, 'loss') == (1.0, 2)
  assert report.best(recs, 'accuracy') == (0.7, 2)  # the earliest of a tie
  assert report.best(recs, 'entropy') is None  # no known direction
  # Two starts (a resume after 100 s idle): each counts from its start to its last log.
  records = {'train': [{'step': 1, 'time': 110.0}, {'step': 2, 'time': 130.0},
                       {'step': 3, 'time': 260.0}],
             'eval': [{'step': 3, 'time': 265.0}]}
  info = {'segments': [{'started': 100.0}, {'started': 250.0}]}
  assert report.wall_time(records, info) == (30.0 + 15.0, 2)
  assert report.wall_time(records, {}) == (155.0, 0)


def test_telemetry_gets_one_plot_and_one_row_per_attention(tmp_path):
  workdir = str(tmp_path)
  records = [{'step': 1, 'split': 'train', 'time': 1.0, 'loss': 2.0}]
  for step, value in ((2, 0.75), (4, 0.5)):
    records.append({'step': step, 'split': 'eval', 'time': float(step), 'accuracy': value,
                    'telemetry/cross_attend/entropy_norm_mean': value,
                    'telemetry/cross_attend/inputs_attended': 1.0 - value / 2,
                    'telemetry/cross_attend/entropy_mean': 3.0,  # nats: table/plot leave it out
                    'telemetry/decoder/latent_overlap': 0.25})
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in records))
  os.makedirs(os.path.join(workdir, 'telemetry'))
  for step in (2, 4):
    Image.new('RGB', (4, 4)).save(os.path.join(workdir, 'telemetry', f'step_{step}.png'))

  result = report.write_report(workdir)
  assert sorted(p for p in result['plots'] if p.startswith('telemetry/')) == [
      'telemetry/cross_attend', 'telemetry/decoder']
  with open(result['readme']) as f:
    text = f.read()
  assert '| cross_attend | 0.5000 | 0.7500 | - | - |' in text  # the final eval's values
  assert '| decoder | - | - | - | 0.2500 |' in text
  assert '](../telemetry/step_4.png)' in text  # the newest attention maps
  assert 'entropy_mean' not in text.replace('entropy_norm_mean', '')
  assert '| accuracy | 0.5000 | 0.7500 (step 2) |' in text
