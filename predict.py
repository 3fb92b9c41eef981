"""Predicts with a trained or converted workdir (its config is read from WORKDIR/config.json).

  python predict.py --workdir=workdirs/vision IMAGE...              # top-k classes
  python predict.py --workdir=workdirs/language --text='...' --mask=' missing.'
  python predict.py --workdir=workdirs/flow FRAME1 FRAME2 --output=out/flow
"""

from perceiver_jax.predict_files import main

if __name__ == '__main__':
  main()
