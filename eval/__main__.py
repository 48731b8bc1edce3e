# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""``python -m instap_eval ...``: zero-shot retrieval from the command line (see `instap_eval.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
