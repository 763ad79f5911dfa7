"""The user-facing jobs: `adapt` (K masks -> masks for a folder), `evaluate` (few-shot Dice/IoU with
95% CIs on fixed episodes) and `demo` (the whole path on built-in data). They sit above the library
layers (data, models, meta, training) and below `commands/`, which only parses arguments."""
