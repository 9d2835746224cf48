// A gateway request whose body is still arriving when a reload takes its route's service away:
// it is routed by the config in force once it is read, as it takes that config's services.

import { connect } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { eventually, type NamedUpstream, startNamedUpstream } from './helpers.js'

let proxy: RunningProxy | undefined
const upstreams: NamedUpstream[] = []

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  for (const upstream of upstreams.splice(0)) await upstream.close()
})

function yaml(services: Record<string, string>, target: string): string {
  return `
services:
${Object.entries(services)
  .map(([name, url]) => `  ${name}: { endpoints: [${url}] }`)
  .join('\n')}
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: orders, match: { prefix: /orders }, targets: [{ service: ${target} }] }
drainTimeoutMs: 2000
`
}

describe('a reload while a request body is arriving', () => {
  it('routes the request by the new config, not to the service the reload removed', async () => {
    const legacy = await startNamedUpstream('legacy')
    const modern = await startNamedUpstream('modern')
    upstreams.push(legacy, modern)
    proxy = await startProxy({
      config: yaml({ legacy: legacy.url, modern: modern.url }, 'legacy'),
      logger: createJsonLogger({ level: 'silent' }),
    })
    const socket = connect(proxy.address('in').port, '127.0.0.1')
    let received = ''
    socket.setEncoding('latin1')
    socket.on('data', (text: string) => {
      received += text
    })
    // Expect: 100-continue, so the 100 says the request's head was taken by the handler of
    // the config in force before the reload.
    socket.write(
      'POST /orders/1 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n',
    )
    await eventually(() => received.includes('100 Continue'), 'the 100 Continue')
    // The strangler fig is done: the route moves to modern and legacy goes.
    await proxy.reload(yaml({ modern: modern.url }, 'modern'))
    socket.write('body')
    // What follows the 100 Continue: the final response.
    const final = (): string => received.slice(received.indexOf('\r\n\r\n') + 4)
    await eventually(() => final().includes('}'), 'the final response')
    socket.destroy()
    expect(final()).toMatch(/^HTTP\/1\.1 200 /)
    expect(final()).toContain('"service":"modern"')
  })
})
