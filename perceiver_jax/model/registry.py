"""One registry: config section name -> the constructor its fields are the kwargs of.

Each pluggable part of a model is a config section `dict(name=..., **kwargs)`; the kinds
are 'preprocessor', 'position_encoding', 'decoder', 'postprocessor', and inside a
multimodal model's `modalities.<m>` also 'query' (a modality's decoder queries) and
'modality_postprocessor'. The encoder is one section of PerceiverEncoder kwargs (no name).

An entry's builder passes what the config cannot know (input shape, latent channels,
number of classes, the preprocessor a flow decoder reads, the model-wide settings) and
hands every other field to the constructor unchanged, so field names are constructor
kwarg names. `part(kind, name, **overrides)` makes a section with every field filled
from the constructor's signature defaults, so each stays overridable from the command
line (--config.model.decoder.num_heads=2) and config.json lists them all.

`build_part` resolves a section and re-raises a constructor's ValueError once as a
UserError naming the config path: `config.model.decoder.num_heads: ...`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Callable, Mapping

try:
  import ml_collections
except ImportError:  # the modules import without it (bare accelerator hosts); configs need it
  ml_collections = None
from flax import nnx

from perceiver_jax.errors import UserError
from perceiver_jax.model import decoders as dec
from perceiver_jax.model import image_processors as img
from perceiver_jax.model import io_processors as io
from perceiver_jax.model import multimodal as mm
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model import postprocessors as post
from perceiver_jax.model import sequence_processors as seq
from perceiver_jax.model import text_processors as text
from perceiver_jax.model.encoder import PerceiverEncoder
from perceiver_jax.model.settings import ModelSettings

# Constructor parameters no config section holds (module plumbing, not choices).
_NOT_FIELDS = ('self', 'dtype', 'param_dtype', 'rngs', 'settings', 'output_w_init',
               'channel_name', 'index_name')


@dataclasses.dataclass
class Context:
  """What a builder knows that the config cannot: passed explicitly, never configured."""
  settings: ModelSettings
  rngs: nnx.Rngs
  num_classes: int
  model_config: Any = None
  input_shape: Any = None
  latent_channels: int | None = None
  preprocessor: nnx.Module | None = None
  decoder: nnx.Module | None = None
  path: str = 'config.model'

  @property
  def kw(self) -> dict[str, Any]:
    return dict(dtype=self.settings.dtype, param_dtype=self.settings.param_dtype,
                rngs=self.rngs)


@dataclasses.dataclass(frozen=True)
class Entry:
  """cls: the constructor whose kwargs the section holds; build(fields, ctx) -> module;
  context: its parameters the builder fills (not fields); defaults: field defaults the
  signature lacks (callables are called, e.g. nested sections); fields_from: another
  constructor whose kwargs this one forwards."""
  cls: Any
  build: Callable[[dict, Context], Any]
  context: tuple[str, ...] = ()
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  fields_from: Any = None

  def field_names(self) -> list[str]:
    """The section's fields (no defaults made: works without ml_collections)."""
    names = list(self._signature_fields())
    return names + [n for n in self.defaults if n not in names]

  def _signature_fields(self) -> dict[str, tuple[Any, Any]]:
    out = {}
    for cls in (self.fields_from, self.cls):
      if cls is None:
        continue
      for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in _NOT_FIELDS:
          continue
        if p.name in self.context:
          continue
        out[p.name] = (p.default, p.annotation)
    return out

  def field_defaults(self) -> dict[str, Any]:
    out = self._signature_fields()
    for name, value in self.defaults.items():
      out[name] = (value() if callable(value) else value, out.get(name, (None, ''))[1])
    return out


def _field_type(annotation: str):
  # A None default stays overridable from the command line (--config.x=64) only with a type.
  annotation = str(annotation)
  for word, kind in (('Sequence', tuple), ('tuple', tuple), ('float', float), ('int', int),
                     ('str', str), ('bool', bool)):
    if word in annotation:
      return kind
  return None


def part(kind: str, name: str | None = None, **overrides) -> ml_collections.ConfigDict:
  """A config section with every constructor kwarg of `kind` `name`, signature defaults
  overridden by `overrides`, e.g. part('decoder', 'classification', num_heads=2).
  position_encoding fields default to a section of their own."""
  entry = resolve(kind, name, f'part({kind!r}, {name!r})')
  fields = entry.field_defaults()
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise UserError(f'{kind} {name!r} has no field {unknown[0]!r}; its fields are '
                    f'{", ".join(sorted(fields))}.')
  section = {} if name is None else {'name': name}
  for field, (default, annotation) in fields.items():
    value = overrides.get(field, default)
    if value is inspect.Parameter.empty:
      raise UserError(f'part({kind!r}, {name!r}) needs {field}=... (it has no default).')
    if field == 'position_encoding':
      value = _position_encoding(default, overrides.get(field))
    if value is None and _field_type(annotation) is not None:
      value = ml_collections.FieldReference(None, field_type=_field_type(annotation))
    section[field] = value
  return ml_collections.ConfigDict(section)


def _position_encoding(default, override):
  # A partial override (dict(num_bands=8)) updates the default section of the same name;
  # another name starts from that encoding's own defaults.
  default = part('position_encoding', 'none') if default is None else default
  if override is None:
    return default
  spec = dict(override)
  name = spec.pop('name', default['name'])
  if name != default['name']:
    return part('position_encoding', name, **spec)
  section = default  # a fresh section (part() makes a new one each call)
  unknown = sorted(set(spec) - set(section))
  if unknown:
    raise UserError(f'position encoding {name!r} has no field {unknown[0]!r}; its fields '
                    f'are {", ".join(sorted(k for k in section if k != "name"))}.')
  section.update(spec)
  return section


def resolve(kind: str, name: str | None, path: str) -> Entry:
  """The entry of `kind` called `name`; an unknown name is one sentence with the valid ones."""
  entries = REGISTRY[kind]
  if name in entries:
    return entries[name]
  valid = [n for n in entries if n is not None]
  close = difflib.get_close_matches(str(name), valid, n=1)
  hint = f' (did you mean {close[0]!r}?)' if close else ''
  raise UserError(f'{path}.name={name!r} is unknown; use one of '
                  f'{", ".join(repr(v) for v in valid)}{hint}.')


def _check_fields(kind: str, name, fields: Mapping[str, Any], path: str) -> None:
  valid = resolve(kind, name, path).field_names()
  unknown = sorted(set(fields) - set(valid))
  if unknown:
    what = f'{kind.replace("_", " ")} {name!r}' if name else kind
    raise UserError(f'{path}.{unknown[0]} is not a field of {what}; its fields are '
                    f'{", ".join(sorted(valid)) or "none"} (start the section from '
                    f'part({kind!r}{f", {name!r}" if name else ""}) to switch kinds).')
  position_encoding = fields.get('position_encoding')
  if isinstance(position_encoding, Mapping) and kind != 'position_encoding':
    pe_fields = dict(position_encoding)
    _check_fields('position_encoding', pe_fields.pop('name', None), pe_fields,
                  f'{path}.position_encoding')


def check_sections(model_config) -> None:
  """Every section's name and field names (nothing built): a cheap check before data."""
  sections = [('preprocessor', 'preprocessor'), ('encoder', 'encoder'),
              ('decoder', 'decoder'), ('postprocessor', 'postprocessor')]
  for kind, key in sections:
    if key in model_config:
      _check_section(kind, model_config[key], f'config.model.{key}')
  for m, mcfg in (model_config.get('modalities') or {}).items():
    for kind, key in (('preprocessor', 'preprocessor'), ('query', 'decoder'),
                      ('modality_postprocessor', 'postprocessor')):
      _check_section(kind, mcfg[key], f'config.model.modalities.{m}.{key}')


def _check_section(kind: str, section, path: str) -> None:
  fields = section_dict(section)
  name = fields.pop('name', None)
  _check_fields(kind, name, fields, path)


def section_dict(section) -> dict[str, Any]:
  """A ConfigDict / dict section as plain nested dicts (FieldReferences resolved)."""
  if hasattr(section, 'to_dict'):
    return section.to_dict()
  return {k: section_dict(v) if isinstance(v, Mapping) else v for k, v in section.items()}


def build_part(kind: str, section, ctx: Context, path: str):
  """Builds one section: its name resolved, its fields checked and handed to the entry;
  a constructor's ValueError comes back once as a UserError naming `path`."""
  fields = section_dict(section)
  name = fields.pop('name', None)
  entry = resolve(kind, name, path)
  _check_fields(kind, name, fields, path)
  try:
    return entry.build(fields, dataclasses.replace(ctx, path=path))
  except UserError:
    raise
  except (ValueError, TypeError) as e:
    raise UserError(f'{path}: {" ".join(str(e).split())}') from None


# Preprocessors: input_shape is context.

def _positional(cls):
  return lambda f, c: cls(c.input_shape, **f, **c.kw)


def _point_cloud(f, c):
  return seq.PointCloudPreprocessor(c.input_shape, **f, dtype=c.settings.dtype)


def _one_hot(f, c):
  return seq.OneHotPreprocessor(c.input_shape, **f, dtype=c.settings.dtype)


def _modalities(c: Context) -> Mapping[str, Any]:
  modalities = c.model_config.get('modalities')
  if not modalities:
    raise UserError('config.model.modalities is empty; a multimodal model needs one section '
                    'per modality (see build.modality_config).')
  return modalities


def _multimodal_preprocessor(f, c):
  modalities = _modalities(c)
  shapes = c.input_shape
  if not isinstance(shapes, Mapping) or set(shapes) != set(modalities):
    given = sorted(shapes) if isinstance(shapes, Mapping) else shapes
    raise UserError(f'A multimodal model needs input_shape as a dict with the modalities '
                    f'{sorted(modalities)}; got {given}.')
  preps = {}
  for m, mcfg in modalities.items():
    path = f'config.model.modalities.{m}.preprocessor'
    if mcfg.preprocessor.get('name') == 'multimodal':
      raise UserError(f"{path}.name='multimodal' cannot nest; each modality needs its own "
                      f"kind ('audio', 'image', 'one_hot', ...).")
    preps[m] = build_part('preprocessor', mcfg.preprocessor,
                          dataclasses.replace(c, input_shape=shapes[m]), path)
  mask_probs = {m: mcfg.mask_prob for m, mcfg in modalities.items()
                if mcfg.get('mask_prob') is not None}
  return mm.MultimodalPreprocessor(preps, mask_probs=mask_probs, **f, **c.kw)


def _encoder(f, c):
  try:
    return PerceiverEncoder(c.preprocessor.num_channels, **f, settings=c.settings, **c.kw)
  except ValueError as e:
    if 'must be divisible by num_heads' not in str(e):
      raise
    # A width derived from the inputs, not in the config: say where it comes from.
    raise ValueError(f'{str(e).rstrip(".")} (the preprocessed inputs of shape '
                     f'{c.input_shape} have {c.preprocessor.num_channels} channels).') from None


# Decoders: latent channels and the number of classes are context.

def _classes(f, c, field='output_num_channels'):
  # None -> the model's number of classes.
  return dict(f, **{field: f.get(field) or c.num_classes})


def _flow_decoder(f, c):
  # One query per preprocessed pixel: the network inputs themselves.
  return dec.FlowDecoder(c.latent_channels, c.preprocessor.num_channels,
                         c.preprocessor.index_dims, **f, settings=c.settings, **c.kw)


def _query(f, c):
  return mm.DecoderQueries(num_z_channels=c.latent_channels, **f, **c.kw)


def _classification_query(f, c):
  # One trainable query, as the reference's classification decoder makes.
  return mm.DecoderQueries((1,), dict(name='trainable', project_pos_dim=-1),
                           kind='classification', num_z_channels=c.latent_channels, **f,
                           **c.kw)


def _multimodal_decoder(f, c):
  queries = {}
  for m, mcfg in _modalities(c).items():
    queries[m] = build_part('query', mcfg.decoder, c,
                            f'config.model.modalities.{m}.decoder')
  return mm.MultimodalDecoder(queries, c.latent_channels, **_classes(f, c),
                              settings=c.settings, **c.kw)


# Postprocessors: the decoder's output channels and the number of classes are context.

def _decoder_channels(decoder) -> int:
  if isinstance(decoder, mm.MultimodalDecoder):
    return decoder.output_num_channels
  inner = getattr(decoder, 'decoder', decoder)
  return inner.output_num_channels if inner.final_project else inner.num_query_channels


def _auto_postprocessor(f, c):
  # A one-query basic decoder emits [batch, 1, classes]: squeeze it; others emit logits.
  one_query = isinstance(c.decoder, dec.BasicDecoder) and c.decoder.num_outputs == 1
  return _classification_postprocessor(f, c) if one_query else None


def _classification_postprocessor(f, c):
  if not isinstance(c.decoder, dec.BasicDecoder) or not c.decoder.final_project:
    raise ValueError("postprocessor 'classification' needs decoder 'basic' with "
                     "final_project=True (the other decoders already emit logits).")
  return post.ClassificationPostprocessor(c.num_classes)


def _flow_postprocessor(f, c):
  if not isinstance(c.decoder, dec.FlowDecoder):
    raise ValueError("postprocessor 'flow' needs decoder 'flow'.")
  return post.FlowPostprocessor(**f)


def _samples_per_patch(f, c, preprocessor_section):
  spp = f.get('samples_per_patch') or (preprocessor_section or {}).get('samples_per_patch')
  if not spp:
    raise ValueError("postprocessor 'audio' needs samples_per_patch (or an 'audio' "
                     "preprocessor to take it from).")
  return spp


def _audio_postprocessor(f, c):
  spp = _samples_per_patch(f, c, c.model_config.get('preprocessor'))
  return post.AudioPostprocessor(_decoder_channels(c.decoder), spp, **c.kw)


def _projection_postprocessor(f, c):
  return post.ProjectionPostprocessor(_decoder_channels(c.decoder),
                                      f.get('num_outputs') or c.num_classes, **c.kw)


def _embedding_decoder(f, c):
  if not isinstance(c.preprocessor, text.TextPreprocessor):
    raise ValueError("postprocessor 'embedding_decoder' needs preprocessor 'text' (it "
                     "reuses that embedding table).")
  return text.EmbeddingDecoder(c.preprocessor.embeddings, dtype=c.settings.dtype,
                               param_dtype=c.settings.param_dtype)


def _multimodal_postprocessor(f, c):
  if not isinstance(c.decoder, mm.MultimodalDecoder):
    raise ValueError("postprocessor 'multimodal' needs decoder 'multimodal'.")
  parts = {}
  for m, mcfg in _modalities(c).items():
    mctx = dataclasses.replace(c, model_config={'preprocessor': mcfg.preprocessor})
    p = build_part('modality_postprocessor', mcfg.postprocessor, mctx,
                   f'config.model.modalities.{m}.postprocessor')
    if p is not None:
      parts[m] = p
  return post.MultimodalPostprocessor(parts)


def _modality_classification(f, c):
  return post.ClassificationPostprocessor(
      f.get('num_classes') or c.num_classes,
      num_input_channels=c.decoder.output_num_channels, **c.kw)


_INPUT = ('input_shape',)
_Z = ('num_z_channels',)
_QUERY_PE = lambda: part('position_encoding', 'trainable', num_channels=None,
                         init_scale=None)
_AUDIO = Entry(post.AudioPostprocessor, _audio_postprocessor,
               ('num_input_channels',), {'samples_per_patch': None})
_PROJECTION = Entry(post.ProjectionPostprocessor, _projection_postprocessor,
                    ('num_input_channels',), {'num_outputs': None})
_NONE = Entry(None, lambda f, c: None)

REGISTRY: dict[str, dict[str | None, Entry]] = {
    'preprocessor': {
        'generic': Entry(io.GenericPreprocessor, _positional(io.GenericPreprocessor),
                         _INPUT, {'position_encoding': lambda: part(
                             'position_encoding', 'fourier')}),
        'patches': Entry(io.PatchesPreprocessor, _positional(io.PatchesPreprocessor),
                         _INPUT, {'position_encoding': lambda: part(
                             'position_encoding', 'fourier')}),
        'image': Entry(img.ImagePreprocessor, _positional(img.ImagePreprocessor), _INPUT,
                       {'position_encoding': lambda: part('position_encoding', 'fourier')}),
        'audio': Entry(seq.AudioPreprocessor, _positional(seq.AudioPreprocessor), _INPUT,
                       {'position_encoding': lambda: part('position_encoding', 'fourier')}),
        'conv1d': Entry(seq.Conv1DPreprocessor, _positional(seq.Conv1DPreprocessor), _INPUT,
                        {'position_encoding': lambda: part('position_encoding', 'fourier')}),
        'one_hot': Entry(seq.OneHotPreprocessor, _one_hot, _INPUT),
        'point_cloud': Entry(seq.PointCloudPreprocessor, _point_cloud, _INPUT),
        'text': Entry(text.TextPreprocessor, _positional(text.TextPreprocessor), _INPUT),
        'multimodal': Entry(mm.MultimodalPreprocessor, _multimodal_preprocessor,
                            ('modalities', 'mask_probs')),
    },
    'position_encoding': {
        # project_pos_dim > 0: a linear projection to that many channels (any encoding).
        'fourier': Entry(pe.FourierPositionEncoding, None, ('index_dims',),
                         {'num_bands': 16, 'project_pos_dim': -1}),
        'trainable': Entry(pe.TrainablePositionEncoding, None, ('index_dim',),
                           {'project_pos_dim': -1}),
        'none': Entry(None, None),
    },
    'encoder': {None: Entry(PerceiverEncoder, _encoder, ('input_channels',))},
    'decoder': {
        'projection': Entry(dec.ProjectionDecoder, lambda f, c: dec.ProjectionDecoder(
            c.latent_channels, c.num_classes, **f, **c.kw), _Z + ('num_classes',)),
        'classification': Entry(
            dec.ClassificationDecoder, lambda f, c: dec.ClassificationDecoder(
                c.latent_channels, c.num_classes, **f, settings=c.settings, **c.kw),
            _Z + ('num_classes',)),
        'basic': Entry(dec.BasicDecoder, lambda f, c: dec.BasicDecoder(
            c.latent_channels, **_classes(f, c), settings=c.settings, **c.kw), _Z,
            {'output_num_channels': None, 'position_encoding': _QUERY_PE}),
        'flow': Entry(dec.FlowDecoder, _flow_decoder,
                      _Z + ('num_query_channels', 'output_image_shape')),
        'video': Entry(mm.VideoAutoencodingDecoder, lambda f, c: mm.VideoAutoencodingDecoder(
            c.latent_channels, **_classes(f, c), settings=c.settings, **c.kw), _Z,
            {'output_num_channels': None, 'position_encoding': _QUERY_PE,
             'output_index_dims': (1, 1, 1)}, fields_from=dec.BasicDecoder),
        'multimodal': Entry(mm.MultimodalDecoder, _multimodal_decoder,
                            _Z + ('modalities',), {'output_num_channels': None}),
    },
    'postprocessor': {
        'auto': Entry(None, _auto_postprocessor),
        'none': _NONE,
        'classification': Entry(None, _classification_postprocessor),
        'flow': Entry(post.FlowPostprocessor, _flow_postprocessor),
        'audio': _AUDIO,
        'projection': _PROJECTION,
        'embedding_decoder': Entry(None, _embedding_decoder),
        'multimodal': Entry(None, _multimodal_postprocessor),
    },
    # Inside model.modalities.<m> of a multimodal model:
    'query': {
        'basic': Entry(mm.DecoderQueries, lambda f, c: _query(dict(f, kind='basic'), c),
                       ('kind', 'num_z_channels'),
                       {'output_index_dims': (1,), 'position_encoding': _QUERY_PE}),
        'video': Entry(mm.DecoderQueries, lambda f, c: _query(dict(f, kind='video'), c),
                       ('kind', 'num_z_channels'),
                       {'output_index_dims': (1, 1, 1), 'position_encoding': _QUERY_PE}),
        'classification': Entry(mm.DecoderQueries, _classification_query,
                                ('kind', 'num_z_channels', 'output_index_dims',
                                 'position_encoding')),
    },
    'modality_postprocessor': {
        'none': _NONE,
        'audio': _AUDIO,
        'projection': _PROJECTION,
        'classification': Entry(post.ClassificationPostprocessor, _modality_classification,
                                ('num_input_channels',), {'num_classes': None}),
    },
}
