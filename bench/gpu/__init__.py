"""GPU lease tooling (issue 14): one prepared command, its wheels, checks and report."""
