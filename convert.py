"""Converts released Perceiver weights into an Orbax checkpoint for eval.py and train.py:

  python convert.py --config=configs/pretrained/vision_perceiver_conv.py \
      --input=model.safetensors --workdir=workdirs/vision_conv
"""

from perceiver_jax.convert.to_checkpoint import main

if __name__ == '__main__':
  main()
