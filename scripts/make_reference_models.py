#!/usr/bin/env python3
"""Build the reference models and their fixed data splits under models/.

Usage: python scripts/make_reference_models.py [NAME ...] [--force]
"""

import argparse
from pathlib import Path

from tfedge.zoo.reference import build_reference, reference_names

ROOT = Path(__file__).resolve().parent.parent / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=reference_names(), help="models to build")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args()
    for name in args.names:
        ref = build_reference(name, ROOT, force=args.force)
        print(f"{name}: {ref.model}")


if __name__ == "__main__":
    main()
