"""`python -m train DIR [--model=PATH] [--section.key=value ...]`"""

import sys

from train.train import main

sys.exit(main())
