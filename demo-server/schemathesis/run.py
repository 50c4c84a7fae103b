"""schemathesis' command line with one workaround, run by `cargo xtask schemathesis`.

CPython 3.11 (Debian 12's 3.11.2; also 3.11.7) keeps the AST constructor's recursion depth in state shared by all
threads, so two threads in `ast.parse` at once can make it raise `SystemError: AST constructor recursion depth
mismatch` (CPython gh-106905). Hypothesis calls `ast.parse` to describe a lambda in a strategy's `repr`, which it
builds while validating the recursive strategy of an "any JSON value" schema (the `data` of a publish); with two
schemathesis workers that aborted a run with a "Runtime Error" that says nothing about the server. The xtask runs
one worker, which removes the race; should the error come anyway, the description falls back to a generic one
here. Nothing else changes.
"""

import sys

try:
    # Where hypothesis 6.170 keeps it; another release may not, and then nothing is patched (the one worker of the
    # xtask still avoids the race).
    import hypothesis.internal.lambda_sources as lambda_sources

    _describe = lambda_sources.lambda_description
except (ImportError, AttributeError):
    lambda_sources = None


def _lambda_description(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <source not shown>"


if lambda_sources is not None:
    lambda_sources.lambda_description = _lambda_description

from schemathesis.cli import schemathesis  # noqa: E402 (after the workaround)

if __name__ == "__main__":
    sys.argv[0] = "schemathesis"
    sys.exit(schemathesis())
