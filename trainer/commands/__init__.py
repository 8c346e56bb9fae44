"""The `python -m trainer` commands, one module per stage; each `add_<command>` builds its parser."""
