import sys

from pipeline.peerbench.run import main

sys.exit(main())
