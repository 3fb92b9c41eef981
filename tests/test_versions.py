"""A flax that cannot import on the installed jax is one sentence naming the fix."""

import pytest

from perceiver_jax import versions


@pytest.mark.parametrize('jax_version, flax_version, fails', [
    ((0, 11, 2), (0, 12, 8), True),    # the pair pip resolved on accelerator images
    ((0, 11, 2), (0, 12, 10), False),  # what those images ship
    ((0, 10, 2), (0, 12, 8), False),   # CI
])
def test_flax_jax_pairs(monkeypatch, jax_version, flax_version, fails):
  found = {'jax': jax_version, 'flax': flax_version}
  monkeypatch.setattr(versions, '_version', found.get)
  monkeypatch.setattr(versions.metadata, 'version',
                      lambda name: '.'.join(map(str, found[name])))
  if not fails:
    versions.check()
    return
  with pytest.raises(ImportError, match=r'flax 0\.12\.8 does not import on jax 0\.11\.2; '
                                        r'install flax>=0\.12\.10'):
    versions.check()
