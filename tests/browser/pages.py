"""Every page a role can open, derived from the URL matrix, and the browser checks run on them.

The list is not kept by hand: it is every URL of tests/core/test_url_matrix.py whose row gives
that role a 200 on GET, with the matrix's `World` supplying the parameters. So a new page is
checked as soon as it has its matrix row. What the server sends that is not an HTML page (CSV,
PDF, JSON, XML, JavaScript) is left out by its Content-Type.
"""

from dataclasses import dataclass

from django.test import Client

from tests.core.test_url_matrix import admin_family_kind, row_for, url_patterns
from tests.usage.test_sync_info_page import insert_rows

# The impacts that fail the check; "moderate" and "minor" findings are not gates.
FAILING_IMPACTS = {"serious", "critical"}

# axe-core's experimental Label in Name rule (WCAG 2.5.3) is off unless enabled.
AXE_OPTIONS = {
    "resultTypes": ["violations"],
    "rules": {"label-content-name-mismatch": {"enabled": True}},
}


# The main Django admin pages, those ops work in every day: the dashboard, the admin's own
# views, and these models' lists and change pages. The other generic ModelAdmin pages are the
# same templates (change list, change form) with other columns and fields.
MAIN_ADMIN_MODELS = {
    ("accounts", "organisation"),
    ("accounts", "user"),
    ("subscriptions", "subscription"),
    ("billing", "invoice"),
    ("billing", "creditnote"),
    ("billing", "payment"),
    ("billing", "dunningcase"),
    ("billing", "dispute"),
    ("support", "supportticket"),
    ("retention", "datadeletionrequest"),
}


@dataclass(frozen=True)
class Page:
    key: str  # the URL name, as in the matrix
    url: str  # path and query, without the host
    admin: bool  # a Django admin page (its own layout; not part of the overflow check)


def pages_for(role, world):
    """Every URL the matrix gives `role` a 200 on GET, sorted by key; of Django admin's generic
    pages, those of MAIN_ADMIN_MODELS, and one history page (one template for every model)."""
    found = []
    history_listed = False
    for key, (route, _pattern) in sorted(url_patterns().items()):
        row = row_for(key, route)
        if row is None or row.get[role] != 200:
            continue
        family = admin_family_kind(key, route)
        if family is not None and family[0] == "history":
            if history_listed:
                continue
            history_listed = True
        elif family is not None and family[1:] not in MAIN_ADMIN_MODELS:
            continue
        found.append(
            Page(
                key=key,
                url=world.url(key, route),
                admin=key.startswith("admin:") or family is not None,
            )
        )
    return found


def sync_info_rows(world, now):
    """A few Sync Info rows of organisation A, so the Sync Info page shows its table."""
    from datetime import timedelta

    from subscriptions.models import ProcessFlow

    flow = ProcessFlow.objects.filter(environment__organisation=world.org).order_by("pk").first()
    insert_rows(
        flow,
        [
            {"record_key": "SO-1001", "synced_at": now - timedelta(hours=3), "message": "Created"},
            {
                "record_key": "SO-1002",
                "synced_at": now - timedelta(hours=2),
                "status": "failed",
                "message": 'Customer "ACME, Inc." not found',
            },
        ],
    )


def session_cookie(user, portal_url):
    """A signed-in session for `user` as a Playwright cookie (one sign-in per role)."""
    from django.conf import settings

    client = Client()
    client.force_login(user)
    value = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {"name": settings.SESSION_COOKIE_NAME, "value": value, "url": portal_url}


def axe_in_every_page(context):
    """axe-core (bundled with axe-playwright-python, nothing fetched) in every document the
    context opens, before the page's own scripts: injected once per context rather than sent
    with every check."""
    from axe_playwright_python.sync_playwright import Axe

    context.add_init_script(script=Axe().axe_script)


def target_of(node):
    return " ".join(" > ".join(t) if isinstance(t, list) else t for t in node["target"])


def axe_problems(page):
    """'rule (impact): selector; selector' for each serious or critical axe violation. axe-core
    is already in the page: the context adds it to every document (`axe_in_every_page`)."""
    results = page.evaluate("options => axe.run(document, options)", AXE_OPTIONS)
    problems = []
    for violation in results["violations"]:
        nodes = [n for n in violation["nodes"] if n.get("impact") in FAILING_IMPACTS]
        if violation["id"] == "label-content-name-mismatch":
            nodes = violation["nodes"]  # experimental: its impact is not a reason to pass it
        if nodes:
            targets = "; ".join(target_of(n) for n in nodes[:8])
            more = f" (+{len(nodes) - 8} more)" if len(nodes) > 8 else ""
            problems.append(f"{violation['id']} ({violation['impact']}): {targets}{more}")
    return problems


# What sticks out to the right at the page's width: the page itself, the outermost visible
# elements whose box ends past the viewport, and tables wider than the box they sit in.
# Visually hidden text (clipped to 1 px, as a stacked table's header row) is not seen and does
# not count.
OVERFLOW_JS = """
() => {
  const width = window.innerWidth;
  const problems = [];
  const name = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) return s + '#' + el.id;
    const classes = [...el.classList].slice(0, 2);
    if (classes.length) s += '.' + classes.join('.');
    const parent = el.parentElement;
    return parent && parent !== document.body ? name(parent) + ' > ' + s : s;
  };
  const scrolling = document.scrollingElement.scrollWidth;
  if (scrolling > width) problems.push(`the page scrolls sideways: ${scrolling} px wide`);
  const clippedAway = (el) => {
    const style = getComputedStyle(el);
    return style.clip === 'rect(0px, 0px, 0px, 0px)'
      || (style.overflow !== 'visible' && el.offsetWidth <= 1 && el.offsetHeight <= 1);
  };
  const hidden = (el, style) => {
    if (style.visibility === 'hidden' || (el.offsetWidth <= 1 && el.offsetHeight <= 1)) return true;
    for (let node = el; node && node !== document.body; node = node.parentElement) {
      if (clippedAway(node)) return true;
    }
    return false;
  };
  // An element cut off or scrolled inside a box that itself fits is reported once, as that box.
  const clipper = (el) => {
    for (let box = el.parentElement; box && box !== document.body; box = box.parentElement) {
      if (getComputedStyle(box).overflowX !== 'visible') return box;
    }
    return null;
  };
  const reported = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (reported.some((r) => r.contains(el))) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;
    const style = getComputedStyle(el);
    if (hidden(el, style)) continue;
    if (box.right > width + 0.5) {
      const outer = clipper(el);
      if (outer && outer.getBoundingClientRect().right <= width + 0.5) {
        reported.push(outer);
        problems.push(`${name(outer)} hides ${outer.scrollWidth - outer.clientWidth} px `
          + `past its right edge (sideways scrolling or cut off), first ${name(el)}`);
      } else {
        reported.push(el);
        problems.push(`${name(el)} ends at ${Math.round(box.right)} px`);
      }
    }
  }
  for (const table of document.querySelectorAll('table')) {
    const box = table.getBoundingClientRect();
    const container = table.parentElement.clientWidth;
    if (box.width > container + 0.5) {
      problems.push(`${name(table)} is ${Math.round(box.width)} px wide in a ${container} px box`);
    }
  }
  return problems;
}
"""
