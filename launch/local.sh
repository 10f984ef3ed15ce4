#!/usr/bin/env bash
# `launch.py local` (see launch/launch.py, or run this with --help). Pass --dry_run to see
# the exact commands first.
exec python3 "$(dirname "$0")/launch.py" local "$@"
