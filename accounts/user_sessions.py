"""The signed-in sessions a user sees on Security. Placeholder until the sessions work lands."""


def security_sessions_context(request) -> dict:
    return {"sessions": []}
