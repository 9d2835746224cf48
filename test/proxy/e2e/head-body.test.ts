// A HEAD request that announces a body (Content-Length above 0, or Transfer-Encoding: chunked)
// is refused 400 REQUEST_INVALID as problem+json, the connection closed, nothing forwarded.
// Content in a HEAD request has no defined semantics (RFC 9110 §9.3.2), and an upstream that
// takes a HEAD to have no body reads those bytes as the next request on its connection
// (request smuggling). The proxy used to forward the body with the HEAD. `Content-Length: 0`
// is no body and passes, and DELETE keeps its body (it has uses). Real sockets against the
// runtime from YAML and a real upstream that records what reaches it; both listener kinds
// (a whole request in one packet also takes the fast path).
import { describe, expect, it } from 'vitest'
import { useOneServiceProxy } from '../support/one-service-proxy.js'
import { sendRaw } from '../support/raw-http.js'

const fixture = useOneServiceProxy()

const listeners = [
  ['gateway', 'in', '/x'],
  ['ambassador', 'out', '/app/x'],
] as const

// The smuggled request the upstream must never see.
const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: u\r\n\r\n'

const bodies = [
  ['Content-Length', `Content-Length: ${smuggled.length}\r\n\r\n${smuggled}`],
  [
    'chunked',
    `Transfer-Encoding: chunked\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`,
  ],
] as const

/** Sends `requestLine` and the header lines `rest` to `listener`, after resetting the upstream. */
function send(listener: string, requestLine: string, rest: string) {
  const port = fixture.proxy().address(listener).port
  fixture.upstream().requests.length = 0
  return sendRaw(port, [`${requestLine} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${rest}`], {
    untilFirstResponse: false,
    timeoutMs: 3_000,
  })
}

describe('a HEAD request with a body', () => {
  for (const [kind, listener, path] of listeners)
    it.each(bodies)(
      `is refused 400 on the ${kind} (%s), and nothing is forwarded`,
      async (_, rest) => {
        const response = await send(listener, `HEAD ${path}`, rest)
        expect(response.status).toBe(400)
        expect(response.headers['content-type']).toBe('application/problem+json')
        expect(response.closed).toBe(true)
        expect(fixture.upstream().requests).toHaveLength(0)
        // A HEAD answer carries no body: the rule is in the log line.
        expect(fixture.logged()).toContain('a HEAD request has no body (RFC 9110')
      },
    )

  // Content-Length: 0 is no body; DELETE keeps its body.
  for (const [kind, listener, path] of listeners)
    it.each([
      ['HEAD with Content-Length: 0', 'HEAD', 'Content-Length: 0\r\nConnection: close\r\n\r\n', ''],
      ['DELETE with a body', 'DELETE', 'Content-Length: 3\r\nConnection: close\r\n\r\nabc', 'abc'],
    ])(`is not a %s: forwarded on the ${kind}`, async (_, method, rest, body) => {
      const response = await send(listener, `${method} ${path}`, rest)
      expect(response.status).toBe(200)
      expect(fixture.upstream().requests).toMatchObject([{ method, body }])
    })
})
