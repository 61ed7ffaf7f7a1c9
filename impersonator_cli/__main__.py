"""`python -m impersonator_cli` runs the same CLI as the `impersonate` console script."""

from impersonator_cli.cli.app import main

if __name__ == "__main__":
    main()
