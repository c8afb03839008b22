import sys

try:
    from conversations.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still loading the command
    print("conversations: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
