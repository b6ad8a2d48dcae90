"""``ntk-complete``: complete matrices and inpaint images with infinitely wide networks.

Each sub-command is small and documented with an example; run ``ntk-complete COMMAND --help``.
"""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ntk-completion")
def main():
    """Complete matrices and images by kernel regression with the NTK/CNTK of infinitely
    wide networks.

    \b
    Examples:
      ntk-complete demo -o demo-output
      ntk-complete matrix ratings.csv -o completed.csv --holdout 0.1
      ntk-complete inpaint photo.png --mask photo_mask.png -o filled.png
    """


# --- matrix commands (issue 2) ---------------------------------------------------------------

# --- image commands (issue 3) ----------------------------------------------------------------

# --- comparison commands (issue 4) -----------------------------------------------------------

# --- demo -------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
