"""Config fields that moved: old path -> new path (both below `config.`).

flag_parsing turns an override of an old path (--config.data.mask_prob=0.2) into one
sentence naming the new place, and validate rejects a config file that still sets one.
Each layer that moves fields keeps its own table here or next to its code; flag_parsing
lists every table it consults in MOVED_TABLES.
"""

from __future__ import annotations

# Task settings once read from config.data (and train.label_smoothing) now live in the
# task's own section, config.task = tasks.task_config(name, ...) (issue 14).
_TASK_DATA_FIELDS = (
    # mlm
    'mask_prob', 'mask_token_prob', 'random_token_prob', 'word_definition', 'eval_mask_seed',
    'text_key',
    # mlm, text_classification
    'seq_len',
    # text_classification
    'text_keys', 'label_key',
    # flow
    'crop_size', 'flip', 'flow_loss', 'valid_only',
    # image_classification
    'image_size', 'randaugment_layers', 'randaugment_magnitude', 'mixup_alpha', 'cutmix_alpha',
    # multilabel
    'inputs_key', 'labels_key', 'video_key', 'clip_samples', 'clip_frames',
    # multimodal_autoencoding
    'video_weight', 'audio_weight', 'label_weight', 'video_psnr_range', 'audio_psnr_range',
    'train_video_points', 'train_audio_patches',
)

MOVED_FLAGS: dict[str, str] = {
    'task': 'task.name',  # config.task was the task's name; now it is a section
    'train.label_smoothing': 'task.label_smoothing',
    **{f'data.{k}': f'task.{k}' for k in _TASK_DATA_FIELDS},
}
