// A request with an expectation the proxy cannot meet (`Expect: foo`; RFC 9110 §10.1.1) is
// refused as every other refusal is: 417 as problem+json with a code, logged, the connection
// closed, nothing forwarded. Left to node:http it got node's bare 417 (an empty chunked body,
// no code, no log line) on a connection kept open. Real sockets against the runtime from YAML
// and a real upstream that records what reaches it; both listener kinds.
import { describe, expect, it } from 'vitest'
import { useOneServiceProxy } from '../support/one-service-proxy.js'
import { sendRaw } from '../support/raw-http.js'

const fixture = useOneServiceProxy()

describe('an Expect other than 100-continue', () => {
  it.each([
    ['gateway', 'in', '/x'],
    ['ambassador', 'out', '/app/x'],
  ])(
    'is refused 417 with a code on the %s, and nothing is forwarded',
    async (_kind, listener, path) => {
      const port = fixture.proxy().address(listener).port
      fixture.upstream().requests.length = 0
      const response = await sendRaw(
        port,
        [
          `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nExpect: foo\r\nContent-Length: 3\r\n\r\n`,
          `abcGET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
        ],
        { gapMs: 50, untilFirstResponse: false, timeoutMs: 3_000 },
      )
      expect(response.status).toBe(417)
      expect(response.headers['content-type']).toBe('application/problem+json')
      expect(JSON.parse(response.body)).toMatchObject({ status: 417, code: 'REQUEST_INVALID' })
      expect(response.closed).toBe(true)
      expect(response.raw.match(/HTTP\/1\.1 \d{3}/g)).toHaveLength(1)
      expect(fixture.upstream().requests).toHaveLength(0)
      expect(fixture.logged()).toContain('"status":417')
    },
  )
})
