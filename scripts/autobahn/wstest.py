# Runs Autobahn|Testsuite's wstest from the folder scripts/install-tools.sh installed it into.
# Python 2.7 only (the testsuite is Python 2 code):  python2.7 wstest.py LIBDIR wstest-args...
# site.addsitedir (not PYTHONPATH) is needed so zope's namespace package resolves.
import site
import sys

site.addsitedir(sys.argv[1])
from autobahntestsuite.wstest import run  # noqa: E402

sys.argv = ["wstest"] + sys.argv[2:]
run()
