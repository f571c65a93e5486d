"""``python -m service``: serve with settings from the STYA2K_* environment variables."""

from service.server import main

main()
