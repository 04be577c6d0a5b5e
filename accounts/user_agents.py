"""A readable name for a browser from its User-Agent header ("Chrome on macOS"), for the
sessions list and sign-in notices. Common browsers only: anything else is named by what is
recognised, or "Unknown browser". A few lines instead of a dependency: the list changes
rarely and a wrong guess only changes a label."""

import re

# Order matters: Edge, Opera and Samsung Internet also say "Chrome", Chrome says "Safari".
_BROWSERS = [
    (re.compile(r"\bEdg(?:e|A|iOS)?/"), "Edge"),
    (re.compile(r"\b(?:OPR|Opera)/"), "Opera"),
    (re.compile(r"\bSamsungBrowser/"), "Samsung Internet"),
    (re.compile(r"\b(?:Firefox|FxiOS)/"), "Firefox"),
    (re.compile(r"\b(?:Chrome|CriOS|Chromium)/"), "Chrome"),
    (re.compile(r"\bVersion/[\d.]+.*\bSafari/"), "Safari"),
]
# Order matters: iOS and Android user agents also say "Mac OS X" and "Linux".
_SYSTEMS = [
    (re.compile(r"\biPhone\b"), "iPhone"),
    (re.compile(r"\biPad\b"), "iPad"),
    (re.compile(r"\bAndroid\b"), "Android"),
    (re.compile(r"\bWindows\b"), "Windows"),
    (re.compile(r"\bCrOS\b"), "ChromeOS"),
    (re.compile(r"\bMacintosh\b|\bMac OS X\b"), "macOS"),
    (re.compile(r"\bLinux\b"), "Linux"),
]


def describe_user_agent(user_agent: str | None) -> str:
    """ "Firefox on Windows", "Safari on iPhone", "Chrome", "A browser on Linux" or
    "Unknown browser"."""
    text = user_agent or ""
    browser = next((name for pattern, name in _BROWSERS if pattern.search(text)), None)
    system = next((name for pattern, name in _SYSTEMS if pattern.search(text)), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser:
        return browser
    if system:
        return f"A browser on {system}"
    return "Unknown browser"
