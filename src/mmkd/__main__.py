import sys

from mmkd.cli import main

sys.exit(main())
