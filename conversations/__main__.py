import sys

from conversations.cli import main

sys.exit(main())
