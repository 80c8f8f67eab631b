"""Train the embedded demo model: `python scripts/train_demo.py --max-minutes 8 --batch-size 1024` (see pladis.demo.train)."""

from pladis.demo.train import main

if __name__ == "__main__":
    main()
