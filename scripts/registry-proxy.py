#!/usr/bin/env python3
"""A TLS-terminating, credential-checking proxy in front of the schema registry, for the tests of a
secured registry (HTTPS with a custom CA, mutual TLS, basic auth or a bearer token).

Apicurio runs without TLS or authentication here; this proxy is what a secured registry looks like
to shardline: it presents the test server certificate of scripts/services.sh, asks for a client
certificate signed by the test CA when --client-ca is given, and answers 401 to a request without
the expected Authorization header. Everything else is forwarded to the registry unchanged.

Secrets come from files (--password-file, --token-file), never from the command line, and are never
printed. Prints "ready <port>" on stdout once it listens.

usage: registry-proxy.py --port P --upstream URL --cert F --key F [--client-ca F]
                         [--user U --password-file F | --token-file F]
"""
import argparse
import base64
import http.server
import ssl
import sys
import urllib.error
import urllib.request


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--upstream", required=True)
    a.add_argument("--cert", required=True)
    a.add_argument("--key", required=True)
    a.add_argument("--client-ca")
    a.add_argument("--user")
    a.add_argument("--password-file")
    a.add_argument("--token-file")
    args = a.parse_args()

    expected = None
    if args.user is not None:
        with open(args.password_file) as f:
            password = f.read().strip()
        pair = f"{args.user}:{password}".encode()
        expected = "Basic " + base64.b64encode(pair).decode()
    elif args.token_file is not None:
        with open(args.token_file) as f:
            expected = "Bearer " + f.read().strip()
    upstream = args.upstream.rstrip("/")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass  # request lines only would be harmless, but nothing is printed at all

        def refuse(self, code):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def forward(self):
            if expected is not None and self.headers.get("Authorization") != expected:
                return self.refuse(401)
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            req = urllib.request.Request(upstream + self.path, data=body, method=self.command)
            ctype = self.headers.get("Content-Type")
            if ctype:
                req.add_header("Content-Type", ctype)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, data, rtype = r.status, r.read(), r.headers.get("Content-Type")
            except urllib.error.HTTPError as e:
                status, data, rtype = e.code, e.read(), e.headers.get("Content-Type")
            except OSError:
                return self.refuse(502)
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            if rtype:
                self.send_header("Content-Type", rtype)
            self.end_headers()
            self.wfile.write(data)

        do_GET = forward
        do_POST = forward

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        ctx.load_verify_locations(args.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):
            sock, addr = super().get_request()
            return ctx.wrap_socket(sock, server_side=True), addr

        def handle_error(self, request, client_address):
            pass  # a refused handshake (no or a foreign client certificate) is expected in tests

    srv = Server(("127.0.0.1", args.port), Handler)
    print(f"ready {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
