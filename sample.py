"""Generates text with a trained Perceiver AR model:

  python sample.py --workdir=workdirs/ar_stdlib --prompt='def main(' --num_tokens=200
"""

from perceiver_jax.sampling import main

if __name__ == '__main__':
  main()
