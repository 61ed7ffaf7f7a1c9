"""impersonate: Liquid Warping GAN (Impersonator, ICCV 2019) as a command-line tool and library."""

__version__ = "0.1.0"
