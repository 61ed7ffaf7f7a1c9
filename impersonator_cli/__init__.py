"""impersonate: Liquid Warping GAN (Impersonator, ICCV 2019) as a command-line tool and library.

    from impersonator_cli import Impersonator, ImitateOptions
    imp = Impersonator(weights_dir="weights")
    imp.imitate(["me.jpg"], "dance.mp4", "out.mp4", options=ImitateOptions(layout="side-by-side"))

The API and its types load on first use, so `import impersonator_cli.errors` stays light.
"""

from impersonator_cli.version import __version__

_EXPORTS = ("Impersonator", "ImitateOptions", "JobResult", "NovelViewOptions", "PersonalizeOptions", "SourceOptions",
            "extract_motion_file")
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        from impersonator_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'impersonator_cli' has no attribute {name!r}")
