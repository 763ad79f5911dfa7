"""Generative models of joint (image, mask) pairs and the audit of what they leak.

data.py      dataset -> (C+1)-channel tensors in [-1, 1]; the seeded content-hash split
gan.py       GAN (StyleGAN-lite or DCGAN) step, sampling       diffusion.py  diffusers UNet2DModel + DDPM/DDIM
trainer.py   the one training loop: progress lines, atomic last checkpoint, exact resume
sample.py    checkpoint -> images/ + masks/ dataset folder (readable by every metaseg command)
audit.py     memorisation audit: max Pearson correlation and SSIM against every training image
figures.py   sample grids, the audit histogram and the closest-pairs figure (matplotlib)
"""
