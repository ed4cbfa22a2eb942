"""The node's dashboard: a Flask app under gunicorn (see `dashboard.app`).

It holds no state of its own and opens no file of the node: every page and API
answer comes from the daemon's local API (`dashboard.local`), called with the
user's session token.
"""
