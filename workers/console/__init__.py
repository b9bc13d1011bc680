"""The web console of the node (issue 17): jobs, results, actions and upload in the browser.

:mod:`workers.console.app` (routes and middleware), :mod:`workers.console.auth` (accounts,
sessions, CSRF), :mod:`workers.console.views` (what the pages show), :mod:`workers.console.results`
and :mod:`workers.console.uploads` (the pages over :mod:`workers.bundle` and
:mod:`workers.upload`). Served by :mod:`workers.http`; see docs/console.md.
"""
