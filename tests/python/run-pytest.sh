#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs the Python client's tests (python/tests) with the first python3 that
# has pytest: $PYTHON, python3 on PATH, then Debian's /usr/bin/python3.
# Exits 77, which ctest reports as skipped, when none has it.
for py in ${PYTHON:-} python3 /usr/bin/python3; do
	if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import pytest' 2>/dev/null; then
		exec "$py" -m pytest -q -p no:cacheprovider "$@"
	fi
done
echo "python_client: skipped, no python3 with pytest here (Debian: apt-get install python3-pytest)" >&2
exit 77
