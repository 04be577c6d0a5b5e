"""The local test IdP as its own process, for the browser journey and for `make run`, which
starts it so the demo organisation Globex can sign in with SSO:

    python -m devkit.saml_idp_server --port 58480 [--key-dir .run/idp]

With --key-dir its key pair is kept there (made the first time), so metadata saved in an
organisation's SSO configuration stays valid across restarts; without, a new one each start.
Anyone may sign in as any email: it is a test IdP, bound to 127.0.0.1.

GET  /metadata            the IdP metadata (its key pair is made at start-up)
GET  /sso?SAMLRequest=... the sign-in page for an AuthnRequest (HTTP-Redirect binding)
POST /sso                 signs the answer and shows the form that posts it to the ACS
"""

import argparse
import contextlib
import html
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from devkit.saml_idp import TestIdP, authn_request_from_redirect

STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;"
    "color:#1f2937}label{display:block;font-weight:600;margin:1rem 0 .25rem}"
    "input{font:inherit;width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #6b7280;"
    "border-radius:6px}button{font:inherit;margin-top:1rem;padding:.55rem 1.1rem;border:0;"
    "border-radius:6px;background:#1d4ed8;color:#fff;cursor:pointer}"
    "button:focus-visible,input:focus-visible{outline:3px solid #93c5fd;outline-offset:2px}"
    ".note{color:#4b5563;font-size:.9rem}"
)


def page(title, body):
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{STYLE}</style></head>"
        f"<body><main><h1>{title}</h1>{body}</main></body></html>"
    ).encode()


def make_handler(idp: TestIdP):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            path = urlsplit(self.path).path
            if path == "/metadata":
                self._send(200, "application/samlmetadata+xml", idp.metadata().encode())
                return
            if path == "/sso":
                try:
                    request = authn_request_from_redirect(self.path)
                except (KeyError, ValueError):
                    self._send(400, "text/plain", b"No readable SAMLRequest")
                    return
                hidden = "".join(
                    f'<input type="hidden" name="{name}" value="{html.escape(value or "")}">'
                    for name, value in request.items()
                )
                form = (
                    '<form method="post" action="/sso">'
                    f'{hidden}<label for="email">Email</label>'
                    '<input id="email" name="email" type="email" required autocomplete="email" '
                    'placeholder="admin@globex.example" autofocus>'
                    '<p class="note">A local test Identity Provider: it signs in whoever you '
                    "type, with no password. The demo's Globex Admin is admin@globex.example."
                    "</p><button type=submit>Sign in at the IdP</button></form>"
                )
                self._send(200, "text/html; charset=utf-8", page("Test IdP sign-in", form))
                return
            self._send(404, "text/plain", b"not found")

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            fields = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            acs = fields.get("acs_url", "")
            relay_state = html.escape(fields.get("relay_state", ""))
            response = idp.response(
                email=fields.get("email", ""),
                acs_url=acs,
                audience=fields.get("issuer", ""),
                in_response_to=fields.get("id", ""),
            )
            form = (
                f'<form method="post" action="{html.escape(acs)}">'
                f'<input type="hidden" name="SAMLResponse" value="{response}">'
                f'<input type="hidden" name="RelayState" value="{relay_state}">'
                "<button type=submit>Continue to the application</button></form>"
            )
            self._send(200, "text/html; charset=utf-8", page("Signed in at the IdP", form))

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=58480)
    parser.add_argument("--key-dir", help="keep the key pair here (made the first time)")
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    if args.key_dir:
        idp = TestIdP.stored(base_url=base, key_dir=args.key_dir)
    else:
        idp = TestIdP(entity_id=f"{base}/metadata", sso_url=f"{base}/sso")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(idp))
    print(f"test IdP listening on {base}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
