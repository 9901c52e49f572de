import sys

from lightning_marl.cli import main

if __name__ == "__main__":
    sys.exit(main())
