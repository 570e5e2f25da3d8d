"""HTTP, and nothing below it: the front door (frontend.py), the app's factory and hooks (app.py), one
route table (routes.py) that the front door, the access check, the rate limits and the body caps
read, the keys (access.py), the limits (limits.py, limitstore.py), the API's thin views (api.py), the
one error shape (answers.py), request ids (observe.py), the API's description (openapi.py) and what
the app keeps for its requests (state.py). The review queue's views and pages (nsfw/review/) use
access, answers, routes and state; nothing here imports the review queue but create_app.
"""
