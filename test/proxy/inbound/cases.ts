// Raw requests the inbound side must refuse, shared by the unit-level hardening tests and the
// end-to-end ones against a real upstream. `HOST` is replaced by the listener's host:port.

// [name, raw request (HOST and PORT are replaced), expected status]
export const refusedByProxy: readonly [string, string, number][] = [
  ['two Host headers', 'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nHost: evil.example\r\n\r\n', 400],
  [
    'two Host headers with the same value',
    'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nHost: HOST\r\n\r\n',
    400,
  ],
  ['Host with userinfo', 'GET /orders/x HTTP/1.1\r\nHost: user:pw@HOST\r\n\r\n', 400],
  ['Host with a non-numeric port', 'GET /orders/x HTTP/1.1\r\nHost: 127.0.0.1:8o\r\n\r\n', 400],
  [
    'Host with an out-of-range port',
    'GET /orders/x HTTP/1.1\r\nHost: 127.0.0.1:65536\r\n\r\n',
    400,
  ],
  ['Host with port 0', 'GET /orders/x HTTP/1.1\r\nHost: 127.0.0.1:0\r\n\r\n', 400],
  ['Host with an empty port', 'GET /orders/x HTTP/1.1\r\nHost: 127.0.0.1:\r\n\r\n', 400],
  ['Host with junk characters', 'GET /orders/x HTTP/1.1\r\nHost: a/b\r\n\r\n', 400],
  ['an empty Host', 'GET /orders/x HTTP/1.1\r\nHost: \r\n\r\n', 400],
  [
    'absolute-form naming another host',
    'GET http://evil.example/orders/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
    400,
  ],
  [
    'absolute-form naming another port',
    'GET http://127.0.0.1:1/orders/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
    400,
  ],
  ['absolute-form with userinfo', 'GET http://u@HOST/orders/x HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  [
    'absolute-form with another scheme',
    'GET ftp://HOST/orders/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
    400,
  ],
  ['the asterisk form', 'OPTIONS * HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  [
    'Upgrade: h2c',
    'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n',
    400,
  ],
  [
    'Upgrade: h2c without Connection',
    'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nUpgrade: h2c\r\n\r\n',
    400,
  ],
  [
    'Upgrade: websocket',
    'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    400,
  ],
  [
    'more header fields than the limit',
    `GET /orders/x HTTP/1.1\r\nHost: HOST\r\n${Array.from({ length: 20 }, (_, i) => `x-h${i}: v\r\n`).join('')}\r\n`,
    431,
  ],
  [
    'far more header fields than the limit',
    `GET /orders/x HTTP/1.1\r\nHost: HOST\r\n${Array.from({ length: 500 }, (_, i) => `x-h${i}: v\r\n`).join('')}\r\n`,
    431,
  ],
  [
    'a Content-Length over the body limit',
    'POST /orders/x HTTP/1.1\r\nHost: HOST\r\nContent-Length: 1025\r\n\r\n',
    413,
  ],
  [
    'a chunked body over the limit',
    `POST /orders/x HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n${'a'.repeat(1024)}\r\n1\r\nb\r\n0\r\n\r\n`,
    413,
  ],
  ['CONNECT', 'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n', 405],
  [
    'an encoded dot-dot above the root',
    'GET /orders/%2e%2e/%2E%2E/admin HTTP/1.1\r\nHost: HOST\r\n\r\n',
    400,
  ],
  ['a dot-dot above the root', 'GET /orders/../../admin HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  ['backslash dot-dot', 'GET /orders\\..\\admin HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  ['an encoded slash', 'GET /%2F%2Fevil.example/x HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  ['an encoded backslash', 'GET /orders/%5c..%5cadmin HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  ['a double-encoded dot-dot', 'GET /orders/%252e%252e/admin HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  ['a double-encoded slash', 'GET /orders/%252fadmin HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  [
    'a double-encoded dot-dot with its hex digits encoded',
    'GET /orders/%25%32%65%25%32%65/admin HTTP/1.1\r\nHost: HOST\r\n\r\n',
    400,
  ],
  ['an encoded NUL', 'GET /orders/a%00b HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  ['a dot-dot with parameters', 'GET /orders/..;/admin HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  ['a malformed percent-encoding', 'GET /orders/%zz HTTP/1.1\r\nHost: HOST\r\n\r\n', 400],
  [
    // Node de-chunks but never decodes gzip; with Transfer-Encoding dropped (hop-by-hop) the app
    // would take the compressed bytes for the body itself.
    'a transfer coding besides chunked',
    'POST /orders/x HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
    400,
  ],
]

// [name, raw request, expected status] for what Node's strict parser refuses itself.
export const refusedByNode: readonly [string, string, number][] = [
  [
    'Content-Length with Transfer-Encoding',
    'POST /orders/x HTTP/1.1\r\nHost: HOST\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    400,
  ],
  [
    'two Content-Length headers',
    'POST /orders/x HTTP/1.1\r\nHost: HOST\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab',
    400,
  ],
  ['obs-fold', 'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Folded: a\r\n b\r\n\r\n', 400],
  ['a bare LF', 'GET /orders/x HTTP/1.1\nHost: HOST\n\n', 400],
  [
    'a bad chunk size',
    'POST /orders/x HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n',
    400,
  ],
  ['a NUL in a header value', 'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-A: a\0b\r\n\r\n', 400],
  [
    'Transfer-Encoding that is not chunked last',
    'POST /orders/x HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n',
    400,
  ],
  ['HTTP/1.1 without Host', 'GET /orders/x HTTP/1.1\r\n\r\n', 400],
  // Not in node's method table, so never the 405 TRACE gets: nothing of it is echoed either.
  [
    'TRACK, a method the parser does not know',
    'TRACK /orders/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
    400,
  ],
  [
    'a header section over maxHeaderBytes',
    `GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Big: ${'a'.repeat(17_000)}\r\n\r\n`,
    431,
  ],
]
