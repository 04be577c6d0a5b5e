"""Keyboard only (WCAG 2.1.1, 2.4.7): sign in, open the organisation menu, Settings >
Subscription > Upgrade Plan, confirm; then Invoice History and the invoice's PDF.

Only `page.keyboard` drives it (Tab, Shift+Tab, Enter); the one `goto` is the sign-in page, and
every other page is reached through the app's own links and redirects. At every focus step the
focused element must show a focus indicator a sighted keyboard user can see: an outline or a
box-shadow ring that is not none or zero wide, whose colour has a 3:1 contrast ratio with the
background behind the element (WCAG 1.4.11; a translucent ring is blended over it first).
"""

import io
import re

import pytest
from playwright.sync_api import expect
from pypdf import PdfReader

from billing.models import Invoice
from subscriptions.models import Subscription
from tests.accounts.factories import PASSWORD, MembershipFactory, OrganisationFactory, UserFactory
from tests.billing.helpers import subscribe

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

MAX_TABS = 80

# What is focused, and how its focus shows: the outline and box-shadow as computed, and the
# first non-transparent background colour behind it.
FOCUSED_JS = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  let background = 'rgb(255, 255, 255)';
  for (let node = el; node; node = node.parentElement) {
    const colour = getComputedStyle(node).backgroundColor;
    if (colour && colour !== 'transparent' && !/rgba\\(.*, 0\\)$/.test(colour)) {
      background = colour;
      break;
    }
  }
  const label = el.labels && el.labels.length ? el.labels[0].innerText : '';
  return {
    tag: el.tagName.toLowerCase(),
    text: (el.innerText || '').replace(/\\s+/g, ' ').trim(),
    label: label.replace(/\\s+/g, ' ').trim(),
    type: el.getAttribute('type') || '',
    outlineStyle: style.outlineStyle,
    outlineWidth: parseFloat(style.outlineWidth) || 0,
    outlineColor: style.outlineColor,
    boxShadow: style.boxShadow,
    background,
  };
}
"""


COLOUR = re.compile(r"rgba?\(([^)]*)\)")
SHADOW = re.compile(
    r"(rgba?\([^)]*\))\s+(-?[\d.]+)px\s+(-?[\d.]+)px\s+([\d.]+)px(?:\s+(-?[\d.]+)px)?"
)
# WCAG 1.4.11 asks 3:1 of the parts of a control a user needs to see, the focus ring included.
MIN_CONTRAST = 3.0


def rgba(colour):
    """(r, g, b, alpha) of a computed CSS colour."""
    parts = [float(x) for x in COLOUR.match(colour)[1].replace("/", ",").split(",")]
    return (*parts[:3], parts[3] if len(parts) > 3 else 1.0)


def luminance(r, g, b):
    def channel(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(colour, background):
    """The contrast ratio of `colour` (blended over `background` if translucent) with it."""
    r, g, b, alpha = rgba(colour)
    br, bg, bb, _ = rgba(background)
    blended = (
        alpha * r + (1 - alpha) * br,
        alpha * g + (1 - alpha) * bg,
        alpha * b + (1 - alpha) * bb,
    )
    lighter, darker = sorted((luminance(*blended), luminance(br, bg, bb)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def focus_indicator_problem(focused):
    """None if `focused` shows a focus indicator with 3:1 contrast against the background
    behind it (an outline, or a box-shadow ring that spreads or blurs), else what is wrong."""
    background = focused["background"]
    rings = []
    if focused["outlineStyle"] != "none" and focused["outlineWidth"] > 0:
        rings.append(focused["outlineColor"])
    for colour, _x, _y, blur, spread in SHADOW.findall(focused["boxShadow"]):
        if float(blur) > 0 or float(spread or 0) > 0:
            rings.append(colour)
    if any(contrast(ring, background) >= MIN_CONTRAST for ring in rings):
        return None
    seen = ", ".join(f"{ring} ({contrast(ring, background):.1f}:1)" for ring in rings) or "none"
    return (
        f"no visible focus indicator on <{focused['tag']}> {focused['text'] or focused['label']!r}:"
        f" rings {seen} on background {background} (outline {focused['outlineStyle']}"
        f" {focused['outlineWidth']}px, box-shadow {focused['boxShadow']!r})"
    )


def tab_to(page, predicate, what, *, backwards=False):
    """Press Tab (Shift+Tab when `backwards`) until the focused element matches `predicate`
    (a function of the FOCUSED_JS dict), checking the focus indicator at every step; fail after
    MAX_TABS presses naming `what` and the elements passed."""
    passed = []
    for _ in range(MAX_TABS):
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
        focused = page.evaluate(FOCUSED_JS)
        if focused is None:
            passed.append("<body>")
            continue
        problem = focus_indicator_problem(focused)
        assert problem is None, f"{page.url}: {problem}"
        if predicate(focused):
            return focused
        passed.append(f"<{focused['tag']}> {(focused['text'] or focused['label'])[:40]!r}")
    pytest.fail(
        f"{page.url}: {what} not reached after {MAX_TABS} Tab presses; focus went through: "
        + ", ".join(passed)
    )
    return None


def text_is(text, tag=None):
    return lambda f: f["text"] == text and (tag is None or f["tag"] == tag)


def test_keyboard_only_upgrade_and_invoice_pdf_with_visible_focus(
    new_page, portal, localstripe, time_machine
):
    from django.utils import timezone

    # The quote is prorated to the second and computed again at confirmation: the clock of
    # the test and the live server stands still, so both see the same instant.
    time_machine.move_to(timezone.now(), tick=False)
    org = OrganisationFactory(name="Keys Ltd", slug="keys")
    admin = UserFactory(email="ada@keys.test")
    MembershipFactory(organisation=org, user=admin, role="admin")
    subscribe(org, now=timezone.now() - timezone.timedelta(days=10))

    page = new_page()
    page.goto(f"{portal}/accounts/login/")
    tab_to(page, lambda f: f["label"].startswith("Email"), "the Email field")
    page.keyboard.type("ada@keys.test")
    tab_to(page, lambda f: f["label"].startswith("Password"), "the Password field")
    page.keyboard.type(PASSWORD)
    tab_to(page, text_is("Sign In", "button"), "Sign In")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Keys Ltd")).to_be_visible()

    tab_to(page, lambda f: f["tag"] == "summary" and f["text"].startswith("Keys Ltd"), "the menu")
    page.keyboard.press("Enter")
    menu = page.locator("details.org-menu")
    expect(menu).to_have_attribute("open", "")
    # Escape closes the menu and gives focus back to its summary, as a menu button does.
    page.keyboard.press("Escape")
    expect(menu).not_to_have_attribute("open", "")
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY"
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("open", "")
    tab_to(page, text_is("Settings", "a"), "Settings in the organisation menu")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Subscription", exact=True)).to_be_visible()

    tab_to(page, text_is("Upgrade Plan", "a"), "Upgrade Plan")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Upgrade Plan")).to_be_visible()
    tab_to(page, text_is("Upgrade to Enterprise", "a"), "Upgrade to Enterprise")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Upgrade to Enterprise")).to_be_visible()
    quoted = page.locator("[data-quote-total]").inner_text()
    # Past the button and back with Shift+Tab: the order works both ways.
    tab_to(page, text_is("Cancel", "a"), "Cancel")
    tab_to(page, text_is(f"Pay {quoted} and upgrade", "button"), "Pay", backwards=True)
    page.keyboard.press("Enter")
    expect(page.get_by_text("You are now on the Enterprise plan.")).to_be_visible()

    assert Subscription.objects.get(organisation=org).plan.code == "enterprise"
    invoice = Invoice.objects.get(organisation=org, kind="upgrade")
    assert invoice.status == Invoice.Status.PAID
    assert invoice.total > 0

    tab_to(page, text_is("Billing", "a"), "Billing in the settings navigation")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/settings/billing/invoices/$"))
    expect(page.get_by_role("link", name="Invoice History")).to_have_attribute(
        "aria-current", "page"
    )
    tab_to(page, text_is(f"{invoice.number} (PDF)", "a"), f"the PDF link of {invoice.number}")
    with page.expect_download() as download_info:
        page.keyboard.press("Enter")
    with open(download_info.value.path(), "rb") as pdf:
        content = pdf.read()
    assert content.startswith(b"%PDF-")
    text = PdfReader(io.BytesIO(content)).pages[0].extract_text()
    assert invoice.number in text
    assert quoted in text
