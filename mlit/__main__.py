import sys

from mlit.train import main

sys.exit(main())
