#!/usr/bin/env bash
# Run a command (the test suite) and fail if it changed the working tree: a test run writes
# nothing into the repository (state goes to tmp_path). Bytecode goes under .venv; the check
# compares `git status --porcelain --ignored` (so ignored files count too) before and after,
# apart from .venv. Outside a git checkout the command just runs.
set -uo pipefail
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$PWD/.venv/pycache}"
# Bytecode is cached there even where the environment says not to write it: every `betblock`
# process a test starts would otherwise compile the project's modules anew (about a quarter of
# the CPU time of its start).
unset PYTHONDONTWRITEBYTECODE
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  exec "$@"
fi
state() { git status --porcelain --ignored --untracked-files=all | grep -v -e '^!! \.venv/' -e '__pycache__/' || true; }
before=$(state)
"$@"
rc=$?
after=$(state)
if [ "$before" != "$after" ]; then
  echo "the test run changed the working tree (it must write only to tmp):" >&2
  diff <(echo "$before") <(echo "$after") >&2
  [ $rc -eq 0 ] && rc=1
fi
exit $rc
