import sys

from greet import main

sys.exit(main())
