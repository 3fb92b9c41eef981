"""The training loop never waits for the devices between its sync points, and its batches
are on the devices before the step that uses them is dispatched."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

from perceiver_jax import trainer
from perceiver_jax.data import pipeline
from tests.helpers import prepared_data_dir, tiny_mnist1d_config

STEP_SECONDS = 0.15  # how long each step keeps the device busy (a sleeping callback)
NUM_STEPS = 8


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory)


def test_loop_dispatches_ahead_of_the_device(data_dir, tmp_path, monkeypatch):
  events = []  # ('fetch', i) when batch i goes to the devices, ('step', i, ready) per step
  make_train_step = trainer.make_train_step

  def slow_make_train_step(*args, **kwargs):
    real = make_train_step(*args, **kwargs)

    @jax.jit
    def slow(state, batch):
      # The device takes STEP_SECONDS per step; the host must not wait for it.
      jax.debug.callback(lambda: time.sleep(STEP_SECONDS))
      return real(state, batch)

    previous = []

    def step(state, batch):
      # Was the previous step finished when this one was dispatched? A loop that reads
      # a result every step (float(loss), device_get) would always find it finished.
      ready = previous[-1].is_ready() if previous else True
      events.append(('step', len(previous), ready))
      state, metrics = slow(state, batch)
      previous.append(metrics['loss'])
      return state, metrics
    return step

  to_global = pipeline.to_global
  def counting_to_global(batch, sharding):
    events.append(('fetch', sum(e[0] == 'fetch' for e in events)))
    return to_global(batch, sharding)

  monkeypatch.setattr(trainer, 'make_train_step', slow_make_train_step)
  monkeypatch.setattr(pipeline, 'to_global', counting_to_global)
  config = tiny_mnist1d_config(**{
      'data.data_dir': data_dir, 'train.num_steps': NUM_STEPS,
      'train.log_every_steps': NUM_STEPS, 'checkpoint.every_steps': NUM_STEPS,
      'data.device_prefetch': 2, 'model.encoder.dropout_prob': 0.0})
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))

  step_events = [e for e in events if e[0] == 'step']
  assert len(step_events) == NUM_STEPS
  # Steps 2..NUM_STEPS-1 come before the first sync point (the log at NUM_STEPS): each
  # must be dispatched while the previous one still runs.
  waited = [i for _, i, ready in step_events[1:] if ready]
  assert not waited, f'the loop waited for the device before steps {waited}'
  # Batch i is sent to the devices before step i - 2 is dispatched (device_prefetch 2).
  for position, event in enumerate(events):
    if event[0] == 'step':
      fetched = sum(e[0] == 'fetch' for e in events[:position])
      assert fetched >= min(event[1] + 3, NUM_STEPS), (event, fetched)


def test_device_batches_resume_at_the_batches_taken(data_dir):
  """The checkpointed position counts batches the loop took, not those prefetched."""
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir})
  dataset = pipeline.make_train_dataset(config.data, global_batch_size=16, seed=0)
  reference = pipeline.make_train_iterator(config.data, global_batch_size=16, seed=0)
  expected = [next(reference)['inputs'] for _ in range(6)]
  host = lambda batch: batch
  batches = pipeline.DeviceBatches(dataset, host, data_config=config.data, prefetch=3)
  taken = [next(batches)['inputs'] for _ in range(2)]
  state = batches.get_state()
  assert state == b'{"next_index": 2}'
  resumed = pipeline.DeviceBatches(dataset, host, data_config=config.data, prefetch=1)
  resumed.set_state(state)
  taken += [next(resumed)['inputs'] for _ in range(4)]
  for want, got in zip(expected, taken):
    np.testing.assert_array_equal(want, got)
