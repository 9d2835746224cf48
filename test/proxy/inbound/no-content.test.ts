// A 204 from the upstream reaches the client without Content-Length or Transfer-Encoding, on
// both paths of an ambassador listener: RFC 9110 §8.6 and RFC 9112 §6.1 say a sender MUST NOT
// send them in a 204. The body was already dropped, but an upstream's `Content-Length: 5`
// was passed on, and a client that trusts it waits for 5 bytes that never come. A 304 keeps
// its Content-Length (the size of the selected representation, which RFC 9110 allows).

import { afterEach, describe, expect, it } from 'vitest'
import type { RequestHandler } from '../../../src/proxy/contracts.js'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { sendRaw } from '../support/raw-http.js'
import { startScriptedUpstream } from '../support/raw-upstream.js'
import { serviceConfig } from '../upstream/helpers.js'
import { contextWith, listenerConfig, registryOf } from './harness.js'

const cleanups: (() => Promise<unknown>)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function ambassador(answer: string, fast: boolean): Promise<number> {
  const up = await startScriptedUpstream(answer)
  cleanups.push(() => up.close())
  const { ctx } = contextWith(() => registryOf([service]), { accessLog: false })
  const service = createServiceRuntime(serviceConfig([up.url], { name: 'orders' }), ctx)
  cleanups.push(() => service.close())
  const listener = listenerConfig()
  const handler = createAmbassadorHandler(listener, ctx)
  const nodeOnly: RequestHandler = (req, res) => handler(req, res)
  const server: ListenerServer = createListenerServer(listener, fast ? handler : nodeOnly, ctx)
  cleanups.push(() => server.close())
  return (await server.listen()).port
}

describe.each([
  ['the fast path', true],
  ['node:http', false],
])('a 204 from the upstream, through %s', (_name, fast) => {
  it.each([
    ['Content-Length: 5', 'Content-Length: 5\r\n'],
    ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked\r\n'],
    ['Transfer-Encoding: identity', 'Transfer-Encoding: identity\r\n'],
  ])('goes to the client without %s', async (_header, line) => {
    const port = await ambassador(`HTTP/1.1 204 No Content\r\n${line}X-Kept: 1\r\n\r\n`, fast)
    const response = await sendRaw(port, 'GET /orders/a HTTP/1.1\r\nHost: a\r\n\r\n', {
      untilFirstResponse: false,
      timeoutMs: 300,
    })
    expect(response.status).toBe(204)
    expect(response.headers['x-kept']).toBe('1')
    expect(response.headers['content-length']).toBeUndefined()
    expect(response.headers['transfer-encoding']).toBeUndefined()
    expect(response.body).toBe('')
  })

  it('keeps the Content-Length of a 304', async () => {
    const port = await ambassador('HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n', fast)
    const response = await sendRaw(port, 'GET /orders/a HTTP/1.1\r\nHost: a\r\n\r\n', {
      untilFirstResponse: false,
      timeoutMs: 300,
    })
    expect(response.status).toBe(304)
    expect(response.headers['content-length']).toBe('5')
  })
})
