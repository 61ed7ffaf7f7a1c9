"""Stage 3 of the method: the Liquid Warping GAN networks (generator with LWB, inpaintor, discriminator)."""
