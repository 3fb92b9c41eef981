"""Which jax and flax import together, checked before either is imported.

flax 0.12.8 and older fail inside their own import on jax 0.11 (jax.experimental.hijax
lost HiPrimitive); flax 0.12.10 imports on jax 0.11.2. setup.cfg pins the range CI tests
(jax < 0.11), but a host may bring its own jax (accelerator images do): then this check
turns flax's AttributeError into one sentence.
"""

from __future__ import annotations

from importlib import metadata

# (first jax release, the oldest flax that imports on it)
FLAX_FOR_JAX = ((0, 11), (0, 12, 10)),


def _version(package: str) -> tuple[int, ...] | None:
  try:
    text = metadata.version(package)
  except metadata.PackageNotFoundError:
    return None
  parts = []
  for piece in text.split('.'):
    digits = ''.join(c for c in piece if c.isdigit())
    if not digits:
      break
    parts.append(int(digits))
  return tuple(parts)


def check() -> None:
  """Raises ImportError naming the fix if the installed flax cannot import on this jax."""
  jax_version, flax_version = _version('jax'), _version('flax')
  if jax_version is None or flax_version is None:
    return
  for first_jax, oldest_flax in FLAX_FOR_JAX:
    if jax_version >= first_jax and flax_version < oldest_flax:
      want = '.'.join(map(str, oldest_flax))
      have_jax, have_flax = metadata.version('jax'), metadata.version('flax')
      raise ImportError(
          f'flax {have_flax} does not import on jax {have_jax}; install '
          f'flax>={want} (pip install "flax>={want}") or jax<{".".join(map(str, first_jax))}.')
